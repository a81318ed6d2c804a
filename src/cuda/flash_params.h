// FlashParams: the one flat POD argument of every flash attention kernel (forward and
// backward), passed by value as a __grid_constant__ kernel parameter.
//
// Layouts (strides in elements, head_dim contiguous):
//   q, o, dout, dq : [B, Sq, Hq, D]      k, v, dk, dv : [B, Sk, Hkv, D]
//   lse            : [B, Hq, Sq] f32 (natural log)       delta : [B, Hq, Sq] f32 (workspace)
// Variable-length batches (varlen) have B = 1 and the sequence offsets inline, so that a
// call needs no device copy of cu_seqlens.
#pragma once

#include <cstdint>


namespace attnkit::cuda {

// Packed sequences passed inline; equals attnkit::kMaxCudaVarlenSeqs (checked in flash_host.cc).
// This header stays C++17 and free of the public headers, for nvcc.
constexpr int kMaxVarlenSeqs = 1024;

struct Strides {
  int64_t batch, row, head;  // the element stride along B, S and H; D is contiguous
};

struct FlashParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;        // forward output
  float* lse;     // forward output (may be null) / backward input
  const void* dout;
  void* dq;
  void* dk;
  void* dv;
  float* delta;   // backward workspace: rowsum(dout ∘ o), [B, Hq, Sq] contiguous
  float* dq_acc;  // backward workspace (atomic path; else null): dQ / scale, [B, Sq, Hq, D] f32
  Strides q_s, k_s, v_s, o_s, do_s, dq_s, dk_s, dv_s;
  int64_t lse_s[3];  // [B, Hq, Sq]
  int batch, seq_q, seq_k;  // seq_* are the packed lengths when varlen
  int heads_q, heads_kv, group;
  int num_seqs;   // grid.z: B, or the number of packed sequences
  bool varlen;
  float scale;       // softmax scale
  float scale_log2;  // scale · log2(e): the kernels exponentiate with exp2
  int cu_q[kMaxVarlenSeqs + 1];
  int cu_k[kMaxVarlenSeqs + 1];
};

// Launchers (flash_fwd_sm80.cu, flash_bwd_sm80.cu): the one place where runtime head_dim,
// dtype and causal become template arguments. is_bf16 false means f16.
void launch_flash_fwd(const FlashParams& p, bool is_bf16, int head_dim, bool causal, int max_seq_q,
                      void* stream);
void launch_flash_bwd(const FlashParams& p, bool is_bf16, int head_dim, bool causal, int max_seq_q,
                      int max_seq_k, void* stream);
// The one-pass backward with dQ by f32 atomics (flash_bwd_atomic_sm80.cu): false, launching
// nothing, for a head_dim it does not take (it takes 64 and 128). Needs p.dq_acc.
bool launch_flash_bwd_atomic(const FlashParams& p, bool is_bf16, int head_dim, bool causal, int max_seq_k,
                             void* stream);
// The Hopper (wgmma + TMA) one-pass backward with dQ summed in f32 (flash_bwd_sm90.cu): false,
// launching nothing, for a head_dim it does not take (it takes 64 and 128). Needs p.dq_acc.
bool launch_flash_bwd_sm90(const FlashParams& p, bool is_bf16, int head_dim, bool causal, int max_seq_k,
                           void* stream);
// The Hopper (wgmma + TMA) forward (flash_fwd_sm90.cu): false, launching nothing, for a
// head_dim it does not take (it takes 64 and 128).
bool launch_flash_fwd_sm90(const FlashParams& p, bool is_bf16, int head_dim, bool causal, int max_seq_q,
                           void* stream);
// A CUDA device of compute capability 9.x is present and usable.
bool device_available();

}  // namespace attnkit::cuda
