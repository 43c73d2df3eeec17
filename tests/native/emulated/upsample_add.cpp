// csrc/cuda/upsample_add.cu built by the host compiler against the CUDA emulation (see csrc/cuda/launch.cuh).
#include "cuda/upsample_add.cu"
