// csrc/cuda/upsample_argmax.cu built by the host compiler against the CUDA emulation (see csrc/cuda/launch.cuh).
#include "cuda/upsample_argmax.cu"
