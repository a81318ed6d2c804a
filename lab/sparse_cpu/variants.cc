// The table of lab variants: 00 is the kernel in src/.
#include "lab/sparse_cpu/variants.h"

#include "cpu/kernels.h"

namespace attnkit::cpu {
#define LAB_VARIANT(ns)                                                                                         \
  namespace ns {                                                                                                \
  void flash_fwd(const Problem&, const TensorView&, const TensorView&, const TensorView&, const TensorView&,    \
                 const TensorView&);                                                                            \
  }
LAB_VARIANT(lab01)
LAB_VARIANT(lab02)
LAB_VARIANT(lab03)
LAB_VARIANT(lab02b)
LAB_VARIANT(lab04)
LAB_VARIANT(lab05)
LAB_VARIANT(lab06)
LAB_VARIANT(lab07)
LAB_VARIANT(lab08)
LAB_VARIANT(lab09)
LAB_VARIANT(lab10)
LAB_VARIANT(lab11)
LAB_VARIANT(lab12)
LAB_VARIANT(lab13)
LAB_VARIANT(lab14)
LAB_VARIANT(lab15)
namespace lab15 {
void flash_fwd_narrow(const Problem&, const TensorView&, const TensorView&, const TensorView&, const TensorView&,
                      const TensorView&);
}
LAB_VARIANT(lab16)
}  // namespace attnkit::cpu

namespace attnkit::lab {
std::map<std::string, FwdFn> variants() { return {{"00", &cpu::flash_fwd}, {"01", &cpu::lab01::flash_fwd}, {"02", &cpu::lab02::flash_fwd},
          {"03", &cpu::lab03::flash_fwd}, {"02b", &cpu::lab02b::flash_fwd},
          {"04", &cpu::lab04::flash_fwd},
          {"05", &cpu::lab05::flash_fwd},
          {"06", &cpu::lab06::flash_fwd},
          {"07", &cpu::lab07::flash_fwd},
          {"08", &cpu::lab08::flash_fwd},
          {"09", &cpu::lab09::flash_fwd},
          {"10", &cpu::lab10::flash_fwd},
          {"11", &cpu::lab11::flash_fwd},
          {"12", &cpu::lab12::flash_fwd},
          {"13", &cpu::lab13::flash_fwd},
          {"14", &cpu::lab14::flash_fwd},
          {"15", &cpu::lab15::flash_fwd},
          {"16", &cpu::lab16::flash_fwd},
          {"17", &cpu::lab15::flash_fwd_narrow}}; }
}  // namespace attnkit::lab
