// Where the hardware places a grid's CTAs: for CTAs shaped like the bulk kernel's launches
// (192 or 320 threads, a given dynamic shared memory), how many SMs a grid of N CTAs lands on
// and how many CTAs share one. A measurement for the split planner (docs/performance.md): a
// grid of fewer CTAs than resident slots may fill SMs two at a time instead of spreading.
//
//   pagedattn-sm-placement [--threads 192] [--smem-kb 80] [--spin-us 50] N...
//
// Each CTA records its SM (%smid) and spins until every CTA of the grid has started or the spin
// time passed, so the CTAs of one wave are resident together.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

__global__ void place_kernel(int* smid, unsigned long long spin_ns) {
  extern __shared__ unsigned char smem[];
  if (threadIdx.x == 0) {
    unsigned id = 0;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
    smid[blockIdx.x] = static_cast<int>(id);
    smem[0] = 1;
    unsigned long long t0 = 0, t = 0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < spin_ns);
  }
  __syncthreads();
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 192, smem_kb = 80, spin_us = 50;
  std::vector<int> grids;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--smem-kb" && i + 1 < argc) smem_kb = std::atoi(argv[++i]);
    else if (a == "--spin-us" && i + 1 < argc) spin_us = std::atoi(argv[++i]);
    else grids.push_back(std::atoi(a.c_str()));
  }
  if (grids.empty()) grids = {32, 64, 66, 96, 128, 132, 133, 192, 256, 264};
  const int smem = smem_kb * 1024;
  check(cudaFuncSetAttribute(place_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "smem attribute");
  check(cudaFuncSetAttribute(place_kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared),
        "carveout");
  int per_sm = 0, sms = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, place_kernel, threads, smem), "occupancy");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "SM count");
  int clock_khz = 0, bus_bits = 0;
  check(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, 0), "memory clock");
  check(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0), "bus width");
  std::printf("# memory: %d kHz x %d bits, double data rate: %.0f GB/s peak\n", clock_khz, bus_bits,
              2.0 * clock_khz * 1e3 * bus_bits / 8.0 / 1e9);
  std::printf("# %d threads, %d KB shared: %d CTAs per SM, %d SMs\n", threads, smem_kb, per_sm, sms);
  std::printf("# grid  SMs-used  max-per-SM  SMs-with-2+  first-16-smids\n");
  for (int n : grids) {
    int* d = nullptr;
    check(cudaMalloc(&d, n * sizeof(int)), "cudaMalloc");
    place_kernel<<<n, threads, smem>>>(d, static_cast<unsigned long long>(spin_us) * 1000ull);
    check(cudaGetLastError(), "launch");
    check(cudaDeviceSynchronize(), "sync");
    std::vector<int> h(n);
    check(cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost), "copy");
    cudaFree(d);
    std::map<int, int> count;
    for (int s : h) ++count[s];
    int most = 0, shared = 0;
    for (const auto& kv : count) {
      most = kv.second > most ? kv.second : most;
      shared += kv.second > 1;
    }
    std::printf("%6d  %8zu  %10d  %11d  ", n, count.size(), most, shared);
    for (int i = 0; i < n && i < 16; ++i) std::printf("%d ", h[i]);
    std::printf("\n");
  }
  return 0;
}
