#include "transform.hpp"

#include <Eigen/Dense>
#include <cmath>

namespace kvcodec::eval::internal {
namespace {

// Rotates the interleaved pairs (2i, 2i+1) of one head's row by sign * pos * theta^(-2i / d), in
// double (the model's RoPE, or its inverse for sign = -1).
void rotate(double* row, uint32_t d, uint32_t pos, double theta, double sign) {
  for (uint32_t i = 0; i + 1 < d; i += 2) {
    const double a = sign * double(pos) * std::pow(theta, -double(i) / double(d));
    const double c = std::cos(a), s = std::sin(a);
    const double x0 = row[i], x1 = row[i + 1];
    row[i] = x0 * c - x1 * s;
    row[i + 1] = x0 * s + x1 * c;
  }
}

}  // namespace

StatusOr<std::shared_ptr<const Profile>> calibrate_profile(const std::vector<FloatKV>& caches, bool keys_before_rope,
                                                           double rope_theta) {
  if (caches.empty()) return InvalidArgument("calibration needs at least one cache");
  auto p = std::make_shared<Profile>();
  p->shape = caches[0].shape;
  p->keys_before_rope = keys_before_rope;
  const uint32_t L = p->shape.layers, H = p->shape.kv_heads, d = p->shape.head_dim;
  for (const FloatKV& c : caches)
    if (c.shape.layers != L || c.shape.kv_heads != H || c.shape.head_dim != d)
      return InvalidArgument("calibration caches of different shapes");
  std::vector<double> row(d);
  for (uint32_t l = 0; l < L; ++l) {
    for (uint32_t kv = 0; kv < 2; ++kv) {
      for (uint32_t h = 0; h < H; ++h) {
        Eigen::MatrixXd cov = Eigen::MatrixXd::Zero(d, d);
        Eigen::VectorXd sum = Eigen::VectorXd::Zero(d);
        double n = 0;
        for (const FloatKV& c : caches) {
          const uint32_t C = uint32_t(c.shape.channels());
          for (uint32_t t = 0; t < c.shape.tokens; ++t) {
            const float* x = c.slice(l, kv) + size_t(t) * C + size_t(h) * d;
            for (uint32_t i = 0; i < d; ++i) row[i] = x[i];
            if (kv == 0 && keys_before_rope) rotate(row.data(), d, t, rope_theta, -1.0);
            const Eigen::Map<const Eigen::VectorXd> v(row.data(), d);
            sum += v;
            cov.selfadjointView<Eigen::Lower>().rankUpdate(v);
            n += 1;
          }
        }
        const Eigen::VectorXd mean = sum / n;
        Eigen::MatrixXd full = cov.selfadjointView<Eigen::Lower>();
        full = full / n - mean * mean.transpose();
        Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(full);
        if (es.info() != Eigen::Success) return Internal("calibration: eigen decomposition failed");
        HeadBasis b;
        b.mean.assign(mean.data(), mean.data() + d);
        for (int k = int(d) - 1; k >= 0; --k) {  // eigenvalues ascend: largest first
          b.var.push_back(std::max(0.0, es.eigenvalues()(k)));
          for (uint32_t i = 0; i < d; ++i) b.axes.push_back(es.eigenvectors()(i, k));
        }
        p->heads.push_back(std::move(b));
      }
    }
  }
  return std::shared_ptr<const Profile>(std::move(p));
}

StatusOr<kvcodec::Profile> to_library_profile(const Profile& p, double rope_theta) {
  std::vector<float> means, axes;
  for (const HeadBasis& b : p.heads) {
    for (double v : b.mean) means.push_back(float(v));
    for (double v : b.axes) axes.push_back(float(v));
  }
  return make_profile(p.shape.layers, p.shape.kv_heads, p.shape.head_dim, std::move(means), std::move(axes),
                      p.keys_before_rope, rope_theta);
}

namespace {

// Calls f(basis, row of `from`, row of `to`, token) for every (layer, K/V, head, token); rows
// are head_dim floats.
template <class F>
void for_each_head_row(const Profile& p, const FloatKV& from, FloatKV& to, F f) {
  to = FloatKV::zeros(from.shape);
  const uint32_t H = from.shape.kv_heads, d = from.shape.head_dim, C = uint32_t(from.shape.channels());
  for (uint32_t l = 0; l < from.shape.layers; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < from.shape.tokens; ++t) {
          const size_t at = size_t(t) * C + size_t(h) * d;
          f(p.head(l, kv, h), kv, from.slice(l, kv) + at, to.slice(l, kv) + at, t);
        }
}

}  // namespace

void forward_transform(const Profile& p, double rope_theta, const FloatKV& in, FloatKV& coef) {
  const uint32_t d = in.shape.head_dim;
  std::vector<double> row(d);
  for_each_head_row(p, in, coef, [&](const HeadBasis& b, uint32_t kv, const float* x, float* y, uint32_t t) {
    for (uint32_t i = 0; i < d; ++i) row[i] = x[i];
    if (kv == 0 && p.keys_before_rope) rotate(row.data(), d, t, rope_theta, -1.0);
    for (uint32_t i = 0; i < d; ++i) row[i] -= b.mean[i];
    for (uint32_t k = 0; k < d; ++k) {
      double s = 0;
      for (uint32_t i = 0; i < d; ++i) s += b.axes[size_t(k) * d + i] * row[i];
      y[k] = float(s);
    }
  });
}

void inverse_transform(const Profile& p, double rope_theta, const FloatKV& coef, FloatKV& out) {
  const uint32_t d = coef.shape.head_dim;
  std::vector<double> row(d);
  for_each_head_row(p, coef, out, [&](const HeadBasis& b, uint32_t kv, const float* y, float* x, uint32_t t) {
    for (uint32_t i = 0; i < d; ++i) row[i] = b.mean[i];
    for (uint32_t k = 0; k < d; ++k)
      for (uint32_t i = 0; i < d; ++i) row[i] += b.axes[size_t(k) * d + i] * double(y[k]);
    if (kv == 0 && p.keys_before_rope) rotate(row.data(), d, t, rope_theta, 1.0);
    for (uint32_t i = 0; i < d; ++i) x[i] = float(row[i]);
  });
}

std::vector<double> key_component_weights(const Profile& p, const std::vector<double>& e) {
  const uint32_t L = p.shape.layers, H = p.shape.kv_heads, d = p.shape.head_dim, C = H * d;
  std::vector<double> w(size_t(L) * 2 * C, 1.0);
  if (e.size() != size_t(L) * H * (d / 2)) return w;
  for (uint32_t l = 0; l < L; ++l)
    for (uint32_t h = 0; h < H; ++h) {
      const HeadBasis& b = p.head(l, 0, h);
      for (uint32_t k = 0; k < d; ++k) {
        double s = 0;
        for (uint32_t i = 0; i < d / 2; ++i) {
          const double a0 = b.axes[size_t(k) * d + 2 * i], a1 = b.axes[size_t(k) * d + 2 * i + 1];
          s += e[(size_t(l) * H + h) * (d / 2) + i] * (a0 * a0 + a1 * a1);
        }
        w[size_t(l) * 2 * C + size_t(h) * d + k] = s;
      }
    }
  return w;
}

Status add_profile_models(kvcodec::Profile& p, const std::vector<FloatKV>& caches, std::span<const double> sensitivity,
                          std::span<const double> component_weight) {
  std::vector<KVView> views;
  for (const FloatKV& c : caches)
    views.push_back(contiguous_view(const_cast<float*>(c.values.data()), DType::kF32, c.shape));  // only read
  return calibrate_profile_models(p, views, sensitivity, component_weight);
}

}  // namespace kvcodec::eval::internal
