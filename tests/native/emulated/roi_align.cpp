// csrc/cuda/roi_align.cu built by the host compiler against the CUDA emulation (see csrc/cuda/launch.cuh).
#include "cuda/roi_align.cu"
