// csrc/cuda/nms.cu built by the host compiler against the CUDA emulation (see csrc/cuda/launch.cuh).
#include "cuda/nms.cu"
