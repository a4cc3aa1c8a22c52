// row_mix and col_mix on the CPU: one image at a time through the spatial kernel (forward,
// and input gradient with the transposed weight), and the weight gradients as sums of outer
// products over image rows (row mix) or image columns (column mix).

#include "cpu/kernels.h"

namespace smlp::cpu::SMLP_CPU_ISA {
namespace {

// The weight gradient sums over all B*C images in at most kMaxChunks chunks (fixed by the
// shape, so that the partial sums and the order they are added in do not depend on the
// thread count); a chunk is packed kBatchPixels pixels at a time.
constexpr int64_t kMaxChunks = 64;
constexpr int64_t kBatchPixels = 64 * 1024;

template <typename S>
void axis_mix_fwd_views(const AxisMixFwdViews<S>& p) {
  using T = Compute<S>;
  constexpr int64_t L = Simd<T>::kLanes;
  const int64_t B = p.x.size[0], C = p.x.size[1], H = p.x.size[2], W = p.x.size[3];
  const int64_t P = H * W;
  const bool row = p.axis == 3;

  std::vector<T> storage;
  const View<const S, 2> none2{};
  const View<const S, 1> none1{};
  const SpatialPlan<T> sp = row ? pack_spatial(p.weight, p.bias, none2, none1, H, W, storage)
                                : pack_spatial(none2, none1, p.weight, p.bias, H, W, storage);

  const int n_threads = threads_for(2 * B * C * P * (row ? W : H));
  ScratchLayout layout;
  const int64_t buf_size = std::is_same_v<S, T> ? 0 : P;  // the output image in T
  const size_t o_img = layout.add<T>(n_threads * (P + L + buf_size));
  char* base = thread_arena(layout.bytes());

#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
  {
    T* img = at<T>(base, o_img) + thread_id() * (P + L + buf_size);
    T* buf = img + P + L;
    std::fill(img + P, img + P + L, T(0));
#pragma omp for schedule(static)
    for (int64_t bc = 0; bc < B * C; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      pack_image(p.x.data + b * p.x.stride[0] + c * p.x.stride[1], p.x.stride[2], p.x.stride[3],
                 H, W, img);
      SpatialImage<T> im;
      (row ? im.t_row : im.t_col) = img;
      spatial_store(sp, im, p.y.data + b * p.y.stride[0] + c * p.y.stride[1], int64_t{0},
                    p.y.stride[2], p.y.stride[3], buf);
    }
  }
}

template <typename St>
void axis_mix_wgrad_views(const AxisMixWgradViews<St>& p) {
  using T = Compute<St>;
  constexpr int64_t L = Simd<T>::kLanes;
  const int64_t B = p.x.size[0], C = p.x.size[1], H = p.x.size[2], W = p.x.size[3];
  const int64_t P = H * W, images = B * C;
  const bool row = p.axis == 3;
  // Row mix: rows (b, c, h) of length W. Column mix: the transposed images, rows (b, c, w)
  // of length H. Either way d_weight += sum over rows of g_row^T x_row.
  const int64_t S = row ? W : H;
  const int64_t lds = round_up(S, L);
  const int64_t n_chunks = std::min(images, kMaxChunks);
  const int64_t chunk = ceil_div(images, n_chunks);
  const int64_t batch = std::clamp<int64_t>(kBatchPixels / P, 1, chunk);  // images per pack
  const int64_t part_size = S * lds;

  const int n_threads = threads_for(2 * B * C * P * (row ? W : H));
  ScratchLayout layout;
  const size_t o_part = layout.add<T>(n_chunks * part_size);
  const size_t o_bias = layout.add<double>(n_chunks * S);
  const size_t o_buf = layout.add<T>(n_threads * 2 * (batch * P + L));
  char* base = thread_arena(layout.bytes());
  T* parts = at<T>(base, o_part);
  std::fill(parts, parts + n_chunks * part_size, T(0));
  double* bias_parts = at<double>(base, o_bias);
  std::fill(bias_parts, bias_parts + n_chunks * S, 0.0);

#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
  {
    T* gb = at<T>(base, o_buf) + thread_id() * 2 * (batch * P + L);
    T* xb = gb + batch * P + L;
#pragma omp for schedule(dynamic, 1)
    for (int64_t ch = 0; ch < n_chunks; ++ch) {
      const int64_t chunk_end = std::min(images, (ch + 1) * chunk);
      for (int64_t first = ch * chunk; first < chunk_end; first += batch) {
        const int64_t count = std::min(batch, chunk_end - first);
        for (int64_t i = 0; i < count; ++i) {
          const int64_t b = (first + i) / C, c = (first + i) % C;
          const St* g = p.g.data + b * p.g.stride[0] + c * p.g.stride[1];
          const St* x = p.x.data + b * p.x.stride[0] + c * p.x.stride[1];
          if (row) {
            pack_image(g, p.g.stride[2], p.g.stride[3], H, W, gb + i * P);
            pack_image(x, p.x.stride[2], p.x.stride[3], H, W, xb + i * P);
          } else {
            pack_image_transposed(g, p.g.stride[2], p.g.stride[3], H, W, gb + i * P);
            pack_image_transposed(x, p.x.stride[2], p.x.stride[3], H, W, xb + i * P);
          }
        }
        std::fill(xb + count * P, xb + count * P + L, T(0));
        OuterArgs<T> o;
        o.d = parts + ch * part_size;
        o.ldd = lds;
        o.rows = S;
        o.cols = S;
        o.a = gb;
        o.lda = S;
        o.b = xb;
        o.ldb = S;
        o.K = count * P / S;
        outer_accumulate(o, bias_parts + ch * S);
      }
    }
  }

  // Chunks in order, in double: the same sums whatever thread ran which chunk.
  std::vector<double> total(static_cast<size_t>(part_size + S), 0.0);
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const T* part = parts + ch * part_size;
    for (int64_t i = 0; i < part_size; ++i) total[i] += static_cast<double>(part[i]);
    for (int64_t i = 0; i < S; ++i) total[part_size + i] += bias_parts[ch * S + i];
  }
  for (int64_t i = 0; i < S; ++i) {
    for (int64_t j = 0; j < S; ++j) {
      p.d_weight.data[i * p.d_weight.stride[0] + j * p.d_weight.stride[1]] =
          static_cast<T>(total[i * lds + j]);
    }
    p.d_bias.data[i * p.d_bias.stride[0]] = static_cast<T>(total[part_size + i]);
  }
}

}  // namespace

void axis_mix_fwd(const AxisMixFwdParams& p) {
  run_typed<AxisMixFwdViews>(p, [](const auto& views) { axis_mix_fwd_views(views); });
}

void axis_mix_wgrad(const AxisMixWgradParams& p) {
  run_typed<AxisMixWgradViews>(p, [](const auto& views) { axis_mix_wgrad_views(views); });
}

}  // namespace smlp::cpu::SMLP_CPU_ISA
