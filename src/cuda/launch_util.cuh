// Host-side helpers shared by the launchers: CUDA error checks and the per-kernel shared
// memory opt-in.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace attnkit::cuda {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("attnkit: CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

// Raises a kernel's dynamic shared memory limit past 48 KB (once per kernel and device).
template <typename Kernel>
void allow_smem(Kernel kernel, int bytes) {
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             "cudaFuncSetAttribute");
}

}  // namespace attnkit::cuda
