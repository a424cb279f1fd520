// One cached sampling step of wavegen.wavenet.WaveNet on the CPU, fused into a single call for the whole batch.
//
// The PyTorch step is about 90 small tensor operations per sample; at these sizes (a few thousand multiply-adds
// each) their per-call overhead costs several times their arithmetic. Here a step is, per layer: write the layer's
// input into its ring rows, the gate product over the k taps read from the ring (and the frame's mel features),
// tanh(a) * sigmoid(b) computed on the product's registers, and one product of the gated units that adds the
// residual into the running input and the skip into the running skip sum; then the ReLU-1x1-ReLU-1x1 head.
//
// Products: every weight is packed in panels of 16 output columns, [panels, fan_in, 16] (contiguous), and a product
// runs tiles of up to 8 rows by up to 8 panels whose sums stay in vector registers for the whole fan-in, so each
// weight is read once per tile of rows, and the panels of a product are shared by the intra-op threads.
// Weights are float32, or float16 when every weight of the model is exactly a float16 value (then they are the
// same numbers in half the bytes: the reference model's 1.94 MiB become 0.97 MiB and stay in a 2 MiB L2 from one
// step to the next); products always multiply and add in float32.
//
// `draw` is a whole sampling position: the step, then the engine's Gumbel-max choice of each row's code from its
// logits and the Gumbel noise the engine drew, the code written into seq and the position advanced.
// Nothing is allocated: the ring, the biases and the mel features are the sampler's cache buffers, the work space
// is one scratch tensor, and the logits go into a buffer the caller owns.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t P = 16;  // floats per panel row: one vector
typedef float vec __attribute__((vector_size(64)));
typedef float uvec __attribute__((vector_size(64), aligned(4)));  // unaligned loads and stores
typedef int32_t ivec __attribute__((vector_size(64)));
typedef uint16_t Half;  // the bits of an IEEE float16

inline vec load(const float* p) { return *reinterpret_cast<const uvec*>(p); }
inline vec load_weights(const float* p) { return load(p); }

// 16 float16 weights at p as a vector of floats: one instruction with AVX-512 (two with F16C), else bit by bit.
inline vec load_weights(const Half* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<vec>(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(__F16C__)
  vec v;
  __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
  std::memcpy(&v, &lo, sizeof lo);
  std::memcpy(reinterpret_cast<char*>(&v) + sizeof lo, &hi, sizeof hi);
  return v;
#else
  vec v;
  for (int i = 0; i < P; ++i) {
    const uint32_t h = p[i], sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    float magnitude;
    if (exponent == 0) {
      magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // zero and subnormals
    } else {
      const uint32_t bits = exponent == 31 ? 0x7f800000u | (mantissa << 13) : ((exponent + 112) << 23) | (mantissa << 13);
      std::memcpy(&magnitude, &bits, sizeof bits);
    }
    uint32_t bits;
    std::memcpy(&bits, &magnitude, sizeof bits);
    bits |= sign;
    std::memcpy(&v[i], &bits, sizeof bits);
  }
  return v;
#endif
}
inline void store(float* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }
inline vec splat(float x) { return x - vec{}; }  // folds to a broadcast (0 + x would not: -0)

// The first n (< 16 allowed) floats at p, zero beyond: biases whose width is not a multiple of 16.
inline vec load_first(const float* p, int64_t n) {
  if (n >= P) return load(p);
  float lanes[P] = {};
  std::memcpy(lanes, p, std::max<int64_t>(n, 0) * sizeof(float));
  return load(lanes);
}

// exp(y) for y <= 0: y = n ln2 + r with |r| <= ln2 / 2, exp(r) by its degree-6 Taylor polynomial (relative error
// below 2e-7 there), times 2^n built in the exponent bits.
inline vec exp_nonpositive(vec y) {
  y = y < -87.0f ? splat(-87.0f) : y;
  const vec shifter = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const vec n = (y * 1.44269504088896341f + shifter) - shifter;
  vec r = y - n * 0.693359375f;  // ln 2 in two parts: the first exact in few bits
  r = r - n * -2.12194440e-4f;
  vec p = splat(1.0f / 720.0f);
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
  return p * reinterpret_cast<const vec&>(bits);
}

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2 |x|): absolute error about 1e-7.
inline vec tanh_v(vec x) {
  const ivec sign = reinterpret_cast<const ivec&>(x) & static_cast<int32_t>(0x80000000u);
  const ivec magnitude = reinterpret_cast<const ivec&>(x) & 0x7fffffff;
  const vec e = exp_nonpositive(-2.0f * reinterpret_cast<const vec&>(magnitude));
  const vec t = (1.0f - e) / (1.0f + e);
  const ivec signed_t = reinterpret_cast<const ivec&>(t) | sign;
  return reinterpret_cast<const vec&>(signed_t);
}

// One stretch of a product's fan-in: row r of it is `length` floats at x + r * stride.
struct Segment {
  const float* x;
  int64_t stride;
  int64_t length;
};

// acc[r][v] += sum over the fan-in (the segments in order) of x_r[i] * panel (v)[i][:], the panels VT consecutive
// ones starting at w, panel_stride floats apart.
template <int RT, int VT, typename W>
inline void accumulate(const Segment* segments, int count, int64_t row0, const W* w, int64_t panel_stride,
                       vec (&acc)[RT][VT]) {
  for (int s = 0; s < count; ++s) {
    const Segment& g = segments[s];
    const float* x[RT];
#pragma GCC unroll 8
    for (int r = 0; r < RT; ++r) x[r] = g.x + (row0 + r) * g.stride;
    for (int64_t i = 0; i < g.length; ++i, w += P) {
      vec wv[VT];
#pragma GCC unroll 8
      for (int v = 0; v < VT; ++v) wv[v] = load_weights(w + v * panel_stride);
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) {
        const vec xb = splat(x[r][i]);
#pragma GCC unroll 8
        for (int v = 0; v < VT; ++v) acc[r][v] += xb * wv[v];
      }
    }
  }
}

// x @ W over segments (the fan-in in order), W packed [panels, fan_in, 16] of float or Half (float16 bits).
template <typename W>
struct Product {
  const Segment* segments;
  int count;
  const W* w;
  int64_t fan_in;

  // acc += rows row0 .. row0 + RT - 1 of x times panels panel0 .. panel0 + VT - 1 of W
  template <int RT, int VT>
  void add_to(int64_t row0, int64_t panel0, vec (&acc)[RT][VT]) const {
    accumulate<RT, VT, W>(segments, count, row0, w + panel0 * fan_in * P, fan_in * P, acc);
  }
};

// y = bias + x @ W; y rows `y_stride` floats apart, its width padded to whole panels. `add` also adds what y held;
// `relu` clamps the result at zero.
template <typename W>
struct Dense : Product<W> {
  static constexpr bool kPairs = false;
  const float* bias;
  float* y;
  int64_t y_stride;
  bool add, relu;

  template <int RT, int VT>
  void tile(int64_t row0, int64_t panel0) const {
    vec acc[RT][VT];
    for (int r = 0; r < RT; ++r) {
      for (int v = 0; v < VT; ++v) {
        float* out = y + (row0 + r) * y_stride + (panel0 + v) * P;
        acc[r][v] = add ? load(bias + (panel0 + v) * P) + load(out) : load(bias + (panel0 + v) * P);
      }
    }
    this->template add_to<RT, VT>(row0, panel0, acc);
    for (int r = 0; r < RT; ++r) {
      for (int v = 0; v < VT; ++v) {
        store(y + (row0 + r) * y_stride + (panel0 + v) * P, relu ? (acc[r][v] > 0.0f ? acc[r][v] : 0.0f)
                                                                 : acc[r][v]);
      }
    }
  }
};

// The gate product of one layer: panels alternate tanh half and sigmoid half (a_0, b_0, a_1, b_1, ...), so a tile of
// 2q panels yields q panels of z = tanh(a) * sigmoid(b) = tanh(a) (1 + tanh(b')) / 2 with b' = b / 2 (the sigmoid
// half of the weights and of the bias is pre-scaled by 1/2). Bias row r: a at bias + r * bias_stride, b `half` later.
template <typename W>
struct Gate : Product<W> {
  static constexpr bool kPairs = true;
  const float* bias;
  int64_t bias_stride, half;
  float* z;
  int64_t z_stride;

  template <int RT, int VT>
  void tile(int64_t row0, int64_t panel0) const {
    static_assert(VT % 2 == 0, "whole pairs of panels");
    vec acc[RT][VT];
    for (int r = 0; r < RT; ++r) {
      const float* b = bias + (row0 + r) * bias_stride;
      for (int q = 0; q < VT / 2; ++q) {
        const int64_t column = (panel0 / 2 + q) * P;
        acc[r][2 * q] = load_first(b + column, half - column);
        acc[r][2 * q + 1] = load_first(b + half + column, half - column);
      }
    }
    this->template add_to<RT, VT>(row0, panel0, acc);
    for (int r = 0; r < RT; ++r) {
      for (int q = 0; q < VT / 2; ++q) {
        const vec gated = tanh_v(acc[r][2 * q]) * (0.5f + 0.5f * tanh_v(acc[r][2 * q + 1]));
        store(z + (row0 + r) * z_stride + (panel0 / 2 + q) * P, gated);
      }
    }
  }
};

// Run op's tiles over rows x panels: panels in chunks of `width` (a power of two <= 8; smaller powers of two for
// the rest), split over the intra-op threads; in each chunk the rows in tiles of 8, then 4, 2, 1. `unit` = 2 keeps
// the gate's pairs of panels together.
template <typename Op, int VT>
void rows_of_chunk(const Op& op, int64_t rows, int64_t panel0) {
  int64_t row = 0;
  for (; row + 8 <= rows; row += 8) op.template tile<8, VT>(row, panel0);
  if (row + 4 <= rows) { op.template tile<4, VT>(row, panel0); row += 4; }
  if (row + 2 <= rows) { op.template tile<2, VT>(row, panel0); row += 2; }
  if (row < rows) op.template tile<1, VT>(row, panel0);
}

template <typename Op>
void chunk(const Op& op, int64_t rows, int64_t panel0, int64_t width) {
  switch (width) {
    case 8: rows_of_chunk<Op, 8>(op, rows, panel0); break;
    case 4: rows_of_chunk<Op, 4>(op, rows, panel0); break;
    case 2: rows_of_chunk<Op, 2>(op, rows, panel0); break;
    default:
      if constexpr (!Op::kPairs) rows_of_chunk<Op, 1>(op, rows, panel0);
  }
}

// Below this many multiply-adds (a couple of microseconds on one core) a product runs on the calling thread: waking
// the other intra-op threads would cost about as much as it saves.
constexpr int64_t kParallelWork = 1 << 17;

template <typename Op>
void run(const Op& op, int64_t rows, int64_t panels, int64_t width, int64_t unit) {
  // chunks: panels / width of `width` panels, then one of each power of two (>= unit) that the rest holds
  const int64_t full = panels / width, rest = panels - full * width;
  int64_t count = full;
  for (int64_t w = width / 2; w >= unit; w /= 2) count += (rest & w) ? 1 : 0;
  const int64_t grain = rows * op.fan_in * panels * P >= kParallelWork ? 1 : count;
  at::parallel_for(0, count, grain, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      if (c < full) {
        chunk(op, rows, c * width, width);
        continue;
      }
      int64_t panel = full * width, index = c - full;
      for (int64_t w = width / 2; w >= unit; w /= 2) {
        if (!(rest & w)) continue;
        if (index-- == 0) {
          chunk(op, rows, panel, w);
          break;
        }
        panel += w;
      }
    }
  });
}

int64_t panels_of(int64_t width) { return (width + P - 1) / P; }

}  // namespace

// The packed weights and shapes of one sampling run, and the step over the sampler's state, passed at every call
// (so that a traced call works on whatever buffers the trace hands it).
//
// embed [Q, R]; per layer a gate weight [2 ceil(G/32), k R + C, 16] (taps j = 0..k-1 reading t - (k-1-j) d_l, then
// C mel features) and a residual-and-skip weight [ceil(R/16) + ceil(S/16), G/2, 16] with its bias (zero residual
// part for the last layer); the head's two weights and biases, packed and padded likewise. The packed weights are
// all float32 or all float16; embedding and biases are float32.
class Plan {
 public:
  Plan(torch::Tensor embed, std::vector<int64_t> dilations, int64_t kernel_size, int64_t hop_length,
       std::vector<torch::Tensor> gate_w, std::vector<torch::Tensor> out_w, std::vector<torch::Tensor> out_b,
       torch::Tensor head1_w, torch::Tensor head1_b, torch::Tensor head2_w, torch::Tensor head2_b, int64_t rows,
       int64_t cond_channels)
      : embed_(embed), dilations_(std::move(dilations)), k_(kernel_size), hop_(hop_length),
        gate_w_(std::move(gate_w)), out_w_(std::move(out_w)), out_b_(std::move(out_b)), head1_w_(head1_w),
        head1_b_(head1_b), head2_w_(head2_w), head2_b_(head2_b), rows_(rows), cond_(cond_channels) {
    const int64_t layers = static_cast<int64_t>(dilations_.size());
    TORCH_CHECK(layers > 0 && k_ >= 2 && k_ <= 16 && hop_ >= 1 && rows_ >= 1, "layers, kernel size, hop, rows");
    res_ = embed.size(1);
    classes_ = embed.size(0);
    half_ = out_w_.empty() ? 0 : out_w_[0].size(1);
    skip_ = head1_w.size(1);
    head_ = head2_w.size(1);
    weight_type_ = head1_w.scalar_type();
    TORCH_CHECK(weight_type_ == torch::kFloat || weight_type_ == torch::kHalf, "weights: float32 or float16");
    for (int64_t d : dilations_) {
      offsets_.push_back(slots_);
      sizes_.push_back((k_ - 1) * d + 1);
      slots_ += sizes_.back();
    }
    TORCH_CHECK(f32(embed), "embedding: float32, contiguous");
    TORCH_CHECK(static_cast<int64_t>(gate_w_.size()) == layers && static_cast<int64_t>(out_w_.size()) == layers &&
                    static_cast<int64_t>(out_b_.size()) == layers, "one gate and one output weight per layer");
    for (int64_t l = 0; l < layers; ++l) {
      TORCH_CHECK(packed(gate_w_[l]) && gate_w_[l].size(0) == 2 * panels_of(half_) &&
                      gate_w_[l].size(1) == k_ * res_ + cond_, "gate weight of layer ", l);
      TORCH_CHECK(packed(out_w_[l]) && out_w_[l].size(0) == panels_of(res_) + panels_of(skip_) &&
                      out_w_[l].size(1) == half_ && f32(out_b_[l]) && out_b_[l].numel() == out_w_[l].size(0) * P,
                  "output weight of layer ", l);
    }
    TORCH_CHECK(packed(head1_w) && packed(head2_w) && f32(head1_b) && f32(head2_b) &&
                    head1_w.size(0) == panels_of(head_) && head2_w.size(0) == panels_of(classes_) &&
                    head1_b.numel() == panels_of(head_) * P && head2_b.numel() == panels_of(classes_) * P,
                "head weights");
    width_res_ = panels_of(res_) * P;
    width_skip_ = panels_of(skip_) * P;
    width_head_ = panels_of(head_) * P;
    width_classes_ = panels_of(classes_) * P;
    // scratch: [B, padded R + S] running input and skip sum, [B, padded G/2] gated units, [B, padded head], logits
    scratch_ = torch::empty({rows_ * (width_res_ + width_skip_ + panels_of(half_) * P + width_head_ +
                                      width_classes_)});
  }

  // Logits [B, Q] of position t = position (0-d int64) into `logits`, from the ring [sum_l ((k-1) d_l + 1), B, R]
  // (layer l's input at time t in row offsets[l] + t % sizes[l], written here), gate_bias [B, L G] (conv and speaker
  // biases, sigmoid half scaled by 1/2), mel_frames [F, B, C] (or empty) and the previous code seq[:, t - 1]
  // (silence at t = 0).
  void step(const torch::Tensor& seq, const torch::Tensor& position, const torch::Tensor& gate_bias_t,
            const torch::Tensor& mel, const torch::Tensor& ring_t, const torch::Tensor& logits_t) {
    check(seq, position, gate_bias_t, mel, ring_t, logits_t);
    const int64_t t = *position.data_ptr<int64_t>();
    if (weight_type_ == torch::kHalf) {
      forward<Half>(seq, t, gate_bias_t, mel, ring_t);
    } else {
      forward<float>(seq, t, gate_bias_t, mel, ring_t);
    }
    const float* out = scratch_.data_ptr<float>() + rows_ * (width_res_ + width_skip_ + panels_of(half_) * P +
                                                             width_head_);
    float* logits = logits_t.data_ptr<float>();
    for (int64_t r = 0; r < rows_; ++r) std::copy(out + r * width_classes_, out + r * width_classes_ + classes_,
                                                  logits + r * classes_);
  }

  // The step, then seq[r, t] = argmax_i(logits[r, i] / temperature + gumbel[r, i]) (argmax of the logits alone when
  // `greedy`; gumbel [B, Q] is then not read), the first index of the largest value as torch's argmax takes it, and
  // position = t + 1.
  void draw(const torch::Tensor& seq, const torch::Tensor& position, const torch::Tensor& gate_bias_t,
            const torch::Tensor& mel, const torch::Tensor& ring_t, const torch::Tensor& logits_t,
            const torch::Tensor& gumbel_t, double temperature, bool greedy) {
    TORCH_CHECK(greedy || (f32(gumbel_t) && gumbel_t.dim() == 2 && gumbel_t.size(0) == rows_ &&
                           gumbel_t.size(1) == classes_), "gumbel: float32 [B, Q]");
    step(seq, position, gate_bias_t, mel, ring_t, logits_t);
    const int64_t t = *position.data_ptr<int64_t>();
    const float* logits = logits_t.data_ptr<float>();
    const float* gumbel = greedy ? nullptr : gumbel_t.data_ptr<float>();
    const float scale = static_cast<float>(temperature);
    int64_t* codes = seq.data_ptr<int64_t>();
    for (int64_t r = 0; r < rows_; ++r) {
      const float* l = logits + r * classes_;
      const float* g = gumbel ? gumbel + r * classes_ : nullptr;
      auto score = [&](int64_t i) { return g ? (scale == 1.0f ? l[i] : l[i] / scale) + g[i] : l[i]; };
      int64_t best = 0;
      float top = score(0);
      for (int64_t i = 1; i < classes_; ++i) {
        const float s = score(i);
        if (s > top) {
          top = s;
          best = i;
        }
      }
      codes[r * seq.stride(0) + t * seq.stride(1)] = best;
    }
    *position.data_ptr<int64_t>() = t + 1;
  }

 private:
  void check(const torch::Tensor& seq, const torch::Tensor& position, const torch::Tensor& gate_bias_t,
             const torch::Tensor& mel, const torch::Tensor& ring_t, const torch::Tensor& logits_t) const {
    const int64_t B = rows_, layers = static_cast<int64_t>(dilations_.size());
    TORCH_CHECK(seq.scalar_type() == torch::kLong && seq.dim() == 2 && seq.size(0) == B, "seq: [B, N] int64");
    TORCH_CHECK(position.scalar_type() == torch::kLong && position.numel() == 1, "position: one int64");
    TORCH_CHECK(f32(ring_t) && ring_t.dim() == 3 && ring_t.size(0) == slots_ && ring_t.size(1) == B &&
                    ring_t.size(2) == res_, "ring: float32 [slots, B, R]");
    TORCH_CHECK(f32(gate_bias_t) && gate_bias_t.dim() == 2 && gate_bias_t.size(0) == B &&
                    gate_bias_t.size(1) == layers * 2 * half_, "gate_bias: float32 [B, L G]");
    TORCH_CHECK(f32(logits_t) && logits_t.dim() == 2 && logits_t.size(0) == B && logits_t.size(1) == classes_,
                "logits: float32 [B, Q]");
    TORCH_CHECK(cond_ == 0 ? mel.numel() == 0 : f32(mel) && mel.dim() == 3 && mel.size(1) == B &&
                    mel.size(2) == cond_, "mel_frames: float32 [F, B, C]");
    const int64_t t = *position.data_ptr<int64_t>();
    TORCH_CHECK(0 <= t && t < seq.size(1), "position out of range");
    TORCH_CHECK(cond_ == 0 || t / hop_ < mel.size(0), "no mel frame for this position");
  }

  // The network at position t, weights of type W: the logits land in the scratch's last block.
  template <typename W>
  void forward(const torch::Tensor& seq, int64_t t, const torch::Tensor& gate_bias_t, const torch::Tensor& mel,
               const torch::Tensor& ring_t) {
    const int64_t B = rows_, R = res_, layers = static_cast<int64_t>(dilations_.size());
    const int64_t state_stride = width_res_ + width_skip_, z_stride = panels_of(half_) * P;
    float* state = scratch_.data_ptr<float>();  // row r: the layer input [R, padded], then the skip sum
    float* z = state + B * state_stride;
    float* hidden = z + B * z_stride;
    float* out = hidden + B * width_head_;
    std::fill(state, state + B * state_stride, 0.0f);
    if (t > 0) {
      const int64_t* codes = seq.data_ptr<int64_t>();
      const float* table = embed_.data_ptr<float>();
      for (int64_t r = 0; r < B; ++r) {
        const int64_t code = codes[r * seq.stride(0) + (t - 1) * seq.stride(1)];
        TORCH_CHECK(0 <= code && code < classes_, "code out of range");
        std::copy(table + code * R, table + (code + 1) * R, state + r * state_stride);
      }
    }
    float* ring = ring_t.data_ptr<float>();
    Segment segments[17];  // up to 16 taps and the mel features
    const float* frame = cond_ ? mel.data_ptr<float>() + (t / hop_) * B * cond_ : nullptr;
    const float* gate_bias = gate_bias_t.data_ptr<float>();
    for (int64_t l = 0; l < layers; ++l) {
      const int64_t size = sizes_[l], d = dilations_[l];
      float* current = ring + (offsets_[l] + t % size) * B * R;
      for (int64_t r = 0; r < B; ++r) {
        std::copy(state + r * state_stride, state + r * state_stride + R, current + r * R);
      }
      int count = 0;
      for (int64_t j = 0; j < k_; ++j) {
        const int64_t lag = (k_ - 1 - j) * d;
        segments[count++] = {ring + (offsets_[l] + (t - lag % size + size) % size) * B * R, R, R};
      }
      if (frame) segments[count++] = {frame, cond_, cond_};
      const Gate<W> gate{{segments, count, weights<W>(gate_w_[l]), k_ * R + cond_},
                         gate_bias + l * 2 * half_, layers * 2 * half_, half_, z, z_stride};
      run(gate, B, gate_w_[l].size(0), gate_width(), 2);
      const Segment gated{z, z_stride, half_};
      const Dense<W> output{{&gated, 1, weights<W>(out_w_[l]), half_}, out_b_[l].data_ptr<float>(), state,
                            state_stride, true, false};
      run(output, B, out_w_[l].size(0), dense_width(), 1);
    }
    for (int64_t r = 0; r < B; ++r) {
      float* s = state + r * state_stride + width_res_;
      for (int64_t i = 0; i < skip_; ++i) s[i] = std::max(s[i], 0.0f);
    }
    const Segment skips{state + width_res_, state_stride, skip_};
    run(Dense<W>{{&skips, 1, weights<W>(head1_w_), skip_}, head1_b_.data_ptr<float>(), hidden, width_head_,
                 false, true}, B, head1_w_.size(0), dense_width(), 1);
    const Segment hiddens{hidden, width_head_, head_};
    run(Dense<W>{{&hiddens, 1, weights<W>(head2_w_), head_}, head2_b_.data_ptr<float>(), out, width_classes_,
                 false, false}, B, head2_w_.size(0), dense_width(), 1);
  }

  template <typename W>
  static const W* weights(const torch::Tensor& t) { return reinterpret_cast<const W*>(t.data_ptr()); }
  static bool f32(const torch::Tensor& t) { return t.scalar_type() == torch::kFloat && t.is_contiguous(); }
  bool packed(const torch::Tensor& t) const { return t.scalar_type() == weight_type_ && t.is_contiguous(); }
  // Panels per tile: 8 rows x 2 panels, 4 x 4 or 2 x 8 keep 16 sums in registers; fewer rows keep 8 panels.
  int64_t dense_width() const { return rows_ >= 8 ? 2 : rows_ >= 4 ? 4 : 8; }
  int64_t gate_width() const { return std::max<int64_t>(2, dense_width()); }

  torch::Tensor embed_;
  std::vector<int64_t> dilations_, offsets_, sizes_;
  int64_t k_, hop_;
  std::vector<torch::Tensor> gate_w_, out_w_, out_b_;
  torch::Tensor head1_w_, head1_b_, head2_w_, head2_b_, scratch_;
  int64_t rows_, cond_, res_ = 0, classes_ = 0, half_ = 0, skip_ = 0, head_ = 0, slots_ = 0;
  int64_t width_res_ = 0, width_skip_ = 0, width_head_ = 0, width_classes_ = 0;
  torch::ScalarType weight_type_ = torch::kFloat;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Plan>(m, "Plan")
      .def(pybind11::init<torch::Tensor, std::vector<int64_t>, int64_t, int64_t, std::vector<torch::Tensor>,
                          std::vector<torch::Tensor>, std::vector<torch::Tensor>, torch::Tensor, torch::Tensor,
                          torch::Tensor, torch::Tensor, int64_t, int64_t>())
      .def("step", &Plan::step, "one fused WaveNet sampling step for the whole batch")
      .def("draw", &Plan::draw, "one fused WaveNet sampling position: the step, the Gumbel-max draw, the advance");
}
