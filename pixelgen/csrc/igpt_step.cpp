// One cached sampling step of pixelgen.igpt.ImageGPT for a small batch on the CPU, fused into a single call.
//
// The Python step is a few dozen small tensor operations per layer; at small batches their per-call overhead costs
// as much as the arithmetic. Here each layer is: layer norm, the qkv product, the K/V cache write at position t,
// single-query attention over positions 0..t, the output projection and residual, layer norm, the GELU MLP and
// residual. Every product streams its weight once for all rows, split into column blocks spread over the intra-op
// threads (at::parallel_for); nothing is allocated: the caller passes the caches, the scratch space and the output.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// y = bias + x @ W for the rows x [rows, in] (row-major); W is stored as column blocks [blocks, in, out / blocks]
// (contiguous), so each thread streams whole blocks of the weight once for all rows.
void dense(const float* x, int64_t rows, const torch::Tensor& weight, const torch::Tensor& bias, float* y) {
  const int64_t blocks = weight.size(0), in = weight.size(1), width = weight.size(2), out = blocks * width;
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const float* wk = w + k * in * width;
      for (int64_t r = 0; r < rows; ++r) {
        float* yk = y + r * out + k * width;
        for (int64_t j = 0; j < width; ++j) yk[j] = b[k * width + j];
      }
      int64_t i = 0;
      for (; i + 4 <= in; i += 4) {  // four weight rows per pass: a quarter of the loads and stores of y
        const float* row = wk + i * width;
        for (int64_t r = 0; r < rows; ++r) {
          const float* xr = x + r * in + i;
          float* yk = y + r * out + k * width;
#pragma omp simd
          for (int64_t j = 0; j < width; ++j) {
            yk[j] += xr[0] * row[j] + xr[1] * row[width + j] + xr[2] * row[2 * width + j] + xr[3] * row[3 * width + j];
          }
        }
      }
      for (; i < in; ++i) {
        const float* row = wk + i * width;
        for (int64_t r = 0; r < rows; ++r) {
          const float xi = x[r * in + i];
          float* yk = y + r * out + k * width;
#pragma omp simd
          for (int64_t j = 0; j < width; ++j) yk[j] += xi * row[j];
        }
      }
    }
  });
}

void layer_norm(const float* x, const torch::Tensor& gain, const torch::Tensor& shift, float eps, int64_t n,
                float* y) {
  double mean = 0.0, var = 0.0;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean /= n;
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.0f / std::sqrt(static_cast<float>(var / n) + eps);
  const float* g = gain.data_ptr<float>();
  const float* b = shift.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - static_cast<float>(mean)) * rstd * g[i] + b[i];
}

// For every row r and head h: out[r, h] = softmax(q[r, h] . K[r, h, 0..t] / sqrt(d)) @ V[r, h, 0..t]. q is the
// qkv rows [rows, 3 * heads * d]; the cache of row r starts at kv + r * row_stride, keys [heads, capacity, d], then
// values. D > 0 fixes the head size at compile time (the loops over it then live in registers); D = 0 reads d.
template <int64_t D>
void attend(const float* qkv, const float* kv, int64_t row_stride, int64_t rows, int64_t heads, int64_t capacity,
            int64_t d, int64_t t, float* scores, float* out) {
  const int64_t dim = D > 0 ? D : d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  at::parallel_for(0, rows * heads, 1, [&](int64_t first, int64_t last) {
    for (int64_t rh = first; rh < last; ++rh) {
      const int64_t r = rh / heads, h = rh % heads;
      const float* qh = qkv + r * 3 * heads * dim + h * dim;
      const float* kh = kv + r * row_stride + h * capacity * dim;
      const float* vh = kh + heads * capacity * dim;
      float* sh = scores + rh * capacity;
      float top = -INFINITY;
      for (int64_t s = 0; s <= t; ++s) {
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t e = 0; e < dim; ++e) dot += qh[e] * kh[s * dim + e];
        sh[s] = dot * scale;
        top = std::max(top, sh[s]);
      }
#pragma omp simd
      for (int64_t s = 0; s <= t; ++s) sh[s] = std::exp(sh[s] - top);
      float total = 0.0f;
#pragma omp simd reduction(+ : total)
      for (int64_t s = 0; s <= t; ++s) total += sh[s];
      float acc[D > 0 ? D : 1024];
      for (int64_t e = 0; e < dim; ++e) acc[e] = 0.0f;
      for (int64_t s = 0; s <= t; ++s) {
        const float p = sh[s];
#pragma omp simd
        for (int64_t e = 0; e < dim; ++e) acc[e] += p * vh[s * dim + e];
      }
      float* oh = out + r * heads * dim + h * dim;
      for (int64_t e = 0; e < dim; ++e) oh[e] = acc[e] / total;
    }
  });
}

float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}

}  // namespace

// Logits [rows, palette] of position t = position (the sampler's 0-d int64 cache position), written into `logits`,
// for a batch of `rows` sequences.
// first [rows, width]: the input of position 0 (start or label embedding plus position 0's embedding); tokens
// [palette, width] and positions [capacity, width]: the embeddings, the input of t > 0 being tokens[seq[r, t - 1]] +
// positions[t]; kv: the K/V cache [layers, rows, 2, heads, capacity, d], written at t; params: 12 tensors per block
// (ln1 gain/shift, qkv weight/bias, proj weight/bias, ln2 gain/shift, fc weight/bias, out weight/bias), then ln_f
// gain/shift and head weight/bias, every weight in column blocks (see dense); scratch: rows * (6 * width + hidden +
// heads * capacity) floats, hidden being the MLP width.
void step(const torch::Tensor& first, const torch::Tensor& tokens, const torch::Tensor& positions,
          const torch::Tensor& seq, const torch::Tensor& kv, const std::vector<torch::Tensor>& params, int64_t heads,
          double eps, const torch::Tensor& position, const torch::Tensor& scratch, const torch::Tensor& logits) {
  TORCH_CHECK(position.scalar_type() == torch::kLong && position.numel() == 1, "position: one int64");
  const int64_t t = *position.data_ptr<int64_t>();
  const int64_t rows = first.size(0), width = first.size(1), layers = kv.size(0), capacity = kv.size(4),
                d = kv.size(5), hidden = params[9].numel();
  TORCH_CHECK(scratch.numel() >= rows * (6 * width + hidden + heads * capacity), "scratch too small");
  TORCH_CHECK(0 <= t && t < capacity, "position out of range");
  TORCH_CHECK(d <= 1024, "head size above 1024");
  TORCH_CHECK(seq.scalar_type() == torch::kLong && seq.size(0) == rows && seq.is_contiguous(), "seq: [rows, N] int64");
  TORCH_CHECK(kv.scalar_type() == torch::kFloat && kv.is_contiguous() && kv.size(1) == rows,
              "kv: float [layers, rows, ...]");
  TORCH_CHECK(tokens.is_contiguous() && positions.is_contiguous() && first.is_contiguous(), "contiguous embeddings");
  float* x = scratch.data_ptr<float>();  // every buffer holds `rows` rows
  float* h = x + rows * width;
  float* qkv = h + rows * width;
  float* att = qkv + rows * 3 * width;
  float* mlp = att + rows * width;
  float* scores = mlp + rows * hidden;
  const int64_t length = seq.size(1);
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * width;
    if (t == 0) {
      std::copy(first.data_ptr<float>() + r * width, first.data_ptr<float>() + (r + 1) * width, xr);
    } else {
      const float* token = tokens.data_ptr<float>() + seq.data_ptr<int64_t>()[r * length + t - 1] * width;
      const float* position = positions.data_ptr<float>() + t * width;
      for (int64_t i = 0; i < width; ++i) xr[i] = token[i] + position[i];
    }
  }
  const float e = static_cast<float>(eps);
  const int64_t row_stride = 2 * heads * capacity * d;  // one row's keys and values in one layer
  for (int64_t l = 0; l < layers; ++l) {
    const torch::Tensor* p = params.data() + 12 * l;
    float* cache = kv.data_ptr<float>() + l * rows * row_stride;
    for (int64_t r = 0; r < rows; ++r) layer_norm(x + r * width, p[0], p[1], e, width, h + r * width);
    dense(h, rows, p[2], p[3], qkv);
    for (int64_t r = 0; r < rows; ++r) {
      const float* qkv_r = qkv + r * 3 * width;
      float* keys = cache + r * row_stride;
      float* values = keys + heads * capacity * d;
      for (int64_t head = 0; head < heads; ++head) {
        std::copy(qkv_r + width + head * d, qkv_r + width + (head + 1) * d, keys + (head * capacity + t) * d);
        std::copy(qkv_r + 2 * width + head * d, qkv_r + 2 * width + (head + 1) * d, values + (head * capacity + t) * d);
      }
    }
    if (d == 32) {
      attend<32>(qkv, cache, row_stride, rows, heads, capacity, d, t, scores, att);
    } else if (d == 64) {
      attend<64>(qkv, cache, row_stride, rows, heads, capacity, d, t, scores, att);
    } else {
      attend<0>(qkv, cache, row_stride, rows, heads, capacity, d, t, scores, att);
    }
    dense(att, rows, p[4], p[5], h);
    for (int64_t i = 0; i < rows * width; ++i) x[i] += h[i];
    for (int64_t r = 0; r < rows; ++r) layer_norm(x + r * width, p[6], p[7], e, width, h + r * width);
    dense(h, rows, p[8], p[9], mlp);
    for (int64_t i = 0; i < rows * hidden; ++i) mlp[i] = gelu_tanh(mlp[i]);
    dense(mlp, rows, p[10], p[11], h);
    for (int64_t i = 0; i < rows * width; ++i) x[i] += h[i];
  }
  const torch::Tensor* f = params.data() + 12 * layers;
  for (int64_t r = 0; r < rows; ++r) layer_norm(x + r * width, f[0], f[1], e, width, h + r * width);
  dense(h, rows, f[2], f[3], logits.data_ptr<float>());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("step", &step, "one fused ImageGPT sampling step for a small batch"); }
