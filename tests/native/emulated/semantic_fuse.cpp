// csrc/cuda/semantic_fuse.cu built by the host compiler against the CUDA emulation (see csrc/cuda/launch.cuh).
#include "cuda/semantic_fuse.cu"
