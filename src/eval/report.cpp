// Renderings of an evaluation report: JSON, text table, SVG plot.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "kvcodec/eval.hpp"

namespace kvcodec::eval {
namespace {

using Json = nlohmann::ordered_json;

Json crossing_json(const Crossing& c) { return c.bits ? Json(*c.bits) : Json(nullptr); }

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

std::string crossing_text(const Crossing& c) { return c.bits ? fmt("%.2f", *c.bits) : c.note; }

std::string base_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// ---- SVG -------------------------------------------------------------------------------------

constexpr const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                    "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

// One panel: log2 x axis (bits per element), linear or log10 y axis.
struct Panel {
  double left, top, width, height;
  double x_lo, x_hi;  // bits, log2 scale
  double y_lo, y_hi;  // metric (log10 scale when log_y)
  bool log_y;

  double x(double bits) const {
    return left + width * (std::log2(bits) - std::log2(x_lo)) / (std::log2(x_hi) - std::log2(x_lo));
  }
  double y(double v) const {
    const double t = log_y ? (std::log10(v) - std::log10(y_lo)) / (std::log10(y_hi) - std::log10(y_lo))
                           : (v - y_lo) / (y_hi - y_lo);
    return top + height * (1.0 - std::clamp(t, 0.0, 1.0));
  }
};

void svg_axes(std::string& s, const Panel& p, const std::string& title, const std::string& y_label,
              double reference, const std::string& reference_label) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='white' stroke='#333'/>\n"
                "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='14' font-weight='bold'>%s</text>\n"
                "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='12'>bits per element (log scale; fp16 = 16)</text>\n"
                "<text transform='translate(%.1f,%.1f) rotate(-90)' text-anchor='middle' font-size='12'>%s</text>\n",
                p.left, p.top, p.width, p.height, p.left + p.width / 2, p.top - 10, xml_escape(title).c_str(),
                p.left + p.width / 2, p.top + p.height + 36, p.left - 48, p.top + p.height / 2, y_label.c_str());
  s += buf;
  for (double b = p.x_lo; b <= p.x_hi * 1.0001; b *= 2) {
    std::snprintf(buf, sizeof buf,
                  "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>"
                  "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='11'>%g</text>\n",
                  p.x(b), p.top, p.x(b), p.top + p.height, p.x(b), p.top + p.height + 16, b);
    s += buf;
  }
  std::vector<double> ticks;
  if (p.log_y) {
    for (double v = std::pow(10.0, std::ceil(std::log10(p.y_lo))); v <= p.y_hi * 1.0001; v *= 10) ticks.push_back(v);
  } else {
    const double span = p.y_hi - p.y_lo;
    const double raw = span / 6;
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    const double step = raw / mag < 2 ? 2 * mag : raw / mag < 5 ? 5 * mag : 10 * mag;
    for (double k = std::ceil(p.y_lo / step); k * step <= p.y_hi; ++k) ticks.push_back(k * step);
  }
  for (double v : ticks) {
    std::snprintf(buf, sizeof buf,
                  "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>"
                  "<text x='%.1f' y='%.1f' text-anchor='end' font-size='11'>%g</text>\n",
                  p.left, p.y(v), p.left + p.width, p.y(v), p.left - 4, p.y(v) + 4, v);
    s += buf;
  }
  std::snprintf(buf, sizeof buf,
                "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#000' stroke-dasharray='6,4'/>"
                "<text x='%.1f' y='%.1f' text-anchor='end' font-size='11'>%s</text>\n",
                p.left, p.y(reference), p.left + p.width, p.y(reference), p.left + p.width - 4, p.y(reference) - 4,
                reference_label.c_str());
  s += buf;
}

// Draws every curve of `rows` in `p`; `value` picks the metric, rows it rejects are skipped.
template <typename Value>
void svg_curves(std::string& s, const Panel& p, const std::vector<SchemeRow>& rows,
                const std::vector<std::string>& names, Value value) {
  char buf[256];
  for (size_t k = 0; k < names.size(); ++k) {
    std::vector<std::pair<double, double>> pts;
    for (const SchemeRow& r : rows) {
      double v;
      if (r.scheme == names[k] && value(r, v)) pts.emplace_back(r.bits_per_element, v);
    }
    std::sort(pts.begin(), pts.end());
    const char* color = kPalette[k % std::size(kPalette)];
    std::string poly;
    for (const auto& [b, v] : pts) poly += fmt("%.1f,", p.x(b)) + fmt("%.1f ", p.y(v));
    if (pts.size() > 1) {
      std::snprintf(buf, sizeof buf, "<polyline fill='none' stroke='%s' stroke-width='1.8' points='", color);
      s += buf + poly + "'/>\n";
    }
    for (const auto& [b, v] : pts) {
      std::snprintf(buf, sizeof buf, "<circle cx='%.1f' cy='%.1f' r='3.2' fill='%s'/>\n", p.x(b), p.y(v), color);
      s += buf;
    }
  }
}

}  // namespace

std::string report_json(const EvalReport& r) {
  Json j;
  j["model"] = r.model;
  j["tokenizer"] = r.tokenizer;
  j["text"] = r.text;
  j["contexts"] = r.contexts;
  j["context_tokens"] = r.context_tokens;
  j["continue_tokens"] = r.continue_tokens;
  j["shape"] = {{"layers", r.shape.layers}, {"tokens", r.shape.tokens}, {"kv_heads", r.shape.kv_heads},
                {"head_dim", r.shape.head_dim}};
  j["offsets"] = r.offsets;
  if (!r.calib_text.empty()) {
    j["calib_text"] = r.calib_text;
    j["calib_offsets"] = r.calib_offsets;
  }
  j["seconds"] = r.seconds;
  j["kl_target"] = kKlTarget;
  j["ppl_target_pct"] = kPplTargetPct;
  j["rows"] = Json::array();
  for (const SchemeRow& row : r.rows) {
    Json o;
    o["scheme"] = row.scheme;
    o["level"] = row.level;
    o["setting"] = row.setting;
    o["lossless"] = row.lossless;
    o["bits_per_element"] = row.bits_per_element;
    o["bytes"] = row.bytes;
    o["ppl_base"] = row.ppl_base;
    o["ppl"] = row.ppl;
    o["ppl_delta_pct"] = row.ppl_delta_pct;
    o["top1_agreement"] = row.top1_agreement;
    o["kl"] = row.kl;
    o["kl_stderr"] = row.kl_stderr;
    o["attn_rel_err"] = row.attn_rel_err;
    o["attn_rel_err_layer"] = row.attn_rel_err_layer;
    o["tensor_rel_err"] = {{"k", row.tensor_rel_err[0]}, {"v", row.tensor_rel_err[1]}};
    o["tensor_max_abs"] = {{"k", row.tensor_max_abs[0]}, {"v", row.tensor_max_abs[1]}};
    j["rows"].push_back(std::move(o));
  }
  j["thresholds"] = Json::array();
  for (const Threshold& t : r.thresholds) {
    j["thresholds"].push_back({{"scheme", t.scheme},
                               {"bits_at_kl", crossing_json(t.kl)},
                               {"kl_note", t.kl.note},
                               {"bits_at_ppl", crossing_json(t.ppl)},
                               {"ppl_note", t.ppl.note},
                               {"bits_at_kl_0.001", crossing_json(t.kl_fine)},
                               {"kl_0.001_note", t.kl_fine.note}});
  }
  return j.dump(1) + "\n";
}

std::string report_table(const EvalReport& r) {
  std::string s;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s on %s: %u contexts of %u + %u tokens, cache %ux2x%ux%ux%u, %.0f s\n",
                base_name(r.model).c_str(), base_name(r.text).c_str(), r.contexts, r.context_tokens,
                r.continue_tokens, r.shape.layers, r.shape.tokens, r.shape.kv_heads, r.shape.head_dim, r.seconds);
  s += buf;
  std::snprintf(buf, sizeof buf, "%-22s %-11s %9s %9s %8s %7s %10s %9s %9s\n", "scheme", "setting", "bits/elem",
                "ppl", "dppl %", "top1", "KL nats", "+-", "attn err");
  s += buf;
  for (const SchemeRow& row : r.rows) {
    std::snprintf(buf, sizeof buf, "%-22s %-11s %9.3f %9.4f %+8.3f %7.4f %10.3g %9.2g %9.3g\n", row.scheme.c_str(),
                  row.setting.c_str(), row.bits_per_element, row.ppl, row.ppl_delta_pct, row.top1_agreement, row.kl,
                  row.kl_stderr, row.attn_rel_err);
    s += buf;
  }
  std::snprintf(buf, sizeof buf,
                "\nbits per element at which mean KL reaches %g nats/token / perplexity rises %g%% / KL reaches %g:\n",
                kKlTarget, kPplTargetPct, kKlFineTarget);
  s += buf;
  for (const Threshold& t : r.thresholds) {
    std::snprintf(buf, sizeof buf, "  %-22s KL: %-30s ppl: %-30s KL %g: %s\n", t.scheme.c_str(),
                  crossing_text(t.kl).c_str(), crossing_text(t.ppl).c_str(), kKlFineTarget,
                  crossing_text(t.kl_fine).c_str());
    s += buf;
  }
  return s;
}

std::string report_svg(const EvalReport& r) {
  std::vector<std::string> names;
  double bits_lo = 16, bits_hi = 16, ppl_lo = 0, ppl_hi = 2 * kPplTargetPct, kl_lo = kKlTarget, kl_hi = kKlTarget;
  for (const SchemeRow& row : r.rows) {
    if (std::find(names.begin(), names.end(), row.scheme) == names.end()) names.push_back(row.scheme);
    if (row.bits_per_element > 0) {
      bits_lo = std::min(bits_lo, row.bits_per_element);
      bits_hi = std::max(bits_hi, row.bits_per_element);
    }
    ppl_lo = std::min(ppl_lo, row.ppl_delta_pct);
    ppl_hi = std::max(ppl_hi, row.ppl_delta_pct);
    if (row.kl > 0) {
      kl_lo = std::min(kl_lo, row.kl);
      kl_hi = std::max(kl_hi, row.kl);
    }
  }
  // Perplexity changes beyond kPplClip are drawn at the top edge (stated in the caption).
  constexpr double kPplClip = 25.0;
  const bool clipped = ppl_hi > kPplClip;
  ppl_hi = std::min(ppl_hi, kPplClip) * 1.05;
  const double x_lo = std::exp2(std::floor(std::log2(bits_lo)));
  // A header's worth above a power of two (fp16's 16.0001) does not open another octave.
  const double x_hi = std::exp2(std::ceil(std::log2(bits_hi) - 0.01));
  const Panel left{70, 50, 440, 330, x_lo, x_hi, ppl_lo - 0.05 * (ppl_hi - ppl_lo), ppl_hi, false};
  const Panel right{600, 50, 440, 330, x_lo, x_hi, std::pow(10.0, std::floor(std::log10(kl_lo))),
                    std::pow(10.0, std::ceil(std::log10(kl_hi))), true};

  const double legend_top = 430;
  const double height = legend_top + 22.0 * double((names.size() + 2) / 3) + 40;
  std::string s;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "<svg xmlns='http://www.w3.org/2000/svg' width='1080' height='%.0f' font-family='sans-serif'>\n"
                "<rect width='100%%' height='100%%' fill='white'/>\n"
                "<text x='540' y='20' text-anchor='middle' font-size='15'>%s on %s: %u contexts of %u + %u tokens "
                "(rate-distortion, one curve per scheme)</text>\n",
                height, xml_escape(base_name(r.model)).c_str(), xml_escape(base_name(r.text)).c_str(), r.contexts,
                r.context_tokens, r.continue_tokens);
  s += buf;
  svg_axes(s, left, "perplexity change of the continuation", "perplexity change (%)", kPplTargetPct, "+1%");
  svg_curves(s, left, r.rows, names, [](const SchemeRow& row, double& v) {
    v = row.ppl_delta_pct;
    return true;
  });
  svg_axes(s, right, "next-token KL divergence", "KL(original || compressed), nats/token (log)", kKlTarget, "0.01");
  svg_curves(s, right, r.rows, names, [](const SchemeRow& row, double& v) {
    v = row.kl;
    return row.kl > 0;  // lossless rows have KL 0: not on a log axis
  });
  for (size_t k = 0; k < names.size(); ++k) {
    const double x = 70 + 340.0 * double(k % 3), y = legend_top + 22.0 * double(k / 3);
    std::snprintf(buf, sizeof buf,
                  "<line x1='%.0f' y1='%.0f' x2='%.0f' y2='%.0f' stroke='%s' stroke-width='3'/>"
                  "<text x='%.0f' y='%.0f' font-size='12'>%s</text>\n",
                  x, y, x + 24, y, kPalette[k % std::size(kPalette)], x + 30, y + 4, xml_escape(names[k]).c_str());
    s += buf;
  }
  std::snprintf(buf, sizeof buf,
                "<text x='70' y='%.0f' font-size='11' fill='#555'>Lossless schemes (KL 0) appear only on the left."
                "%s</text>\n</svg>\n",
                height - 12, clipped ? " Perplexity changes above 25% are drawn at the top edge." : "");
  s += buf;
  return s;
}

}  // namespace kvcodec::eval
