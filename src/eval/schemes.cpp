// make_schemes: parses "family[:key=value...]" entries into Scheme objects.
#include "schemes.hpp"

#include <charconv>
#include <map>
#include <string>
#include <vector>

namespace kvcodec::eval {
namespace {

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    size_t end = s.find(sep, start);
    out.push_back(s.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) return out;
    start = end + 1;
  }
}

bool parse_int(std::string_view s, long long& v) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size();
}

bool parse_double(std::string_view s, double& v) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size();
}

// One entry: family, options in the order given, and the entry text (for messages).
struct Entry {
  std::string text;
  std::string family;
  std::vector<std::pair<std::string, std::string>> options;
  std::map<std::string, std::string> used;  // options consumed so far

  Status error(const std::string& what) const { return InvalidArgument("scheme '" + text + "': " + what); }

  bool has(const std::string& key) const {
    for (const auto& [k, v] : options)
      if (k == key) return true;
    return false;
  }
  std::string value(const std::string& key, const std::string& fallback) {
    for (const auto& [k, v] : options) {
      if (k == key) {
        used[k] = v;
        return v;
      }
    }
    return fallback;
  }
  // Integer list "a/b/c" with ranges "a-b".
  StatusOr<std::vector<long long>> ints(const std::string& key, const std::string& fallback, long long lo,
                                        long long hi) {
    std::vector<long long> out;
    std::string text = value(key, fallback);
    for (std::string_view item : split(text, '/')) {
      std::vector<std::string_view> range = split(item, '-');
      long long a = 0, b = 0;
      if (range.size() > 2 || !parse_int(range[0], a) || !parse_int(range.back(), b) || b < a)
        return error(key + ": expected integers a/b/c or a range a-b, got '" + text + "'");
      if (a < lo || b > hi)
        return error(key + ": values must be in " + std::to_string(lo) + ".." + std::to_string(hi));
      for (long long v = a; v <= b; ++v) out.push_back(v);
    }
    return out;
  }
  StatusOr<long long> one_int(const std::string& key, long long fallback, long long lo, long long hi) {
    KVCODEC_ASSIGN_OR_RETURN(std::vector<long long> v, ints(key, std::to_string(fallback), lo, hi));
    if (v.size() != 1) return error(key + " takes one value");
    return v[0];
  }
  // Every option must have been consumed by the family's parser.
  Status check_all_used() const {
    for (const auto& [k, v] : options)
      if (!used.count(k)) return error("unknown option '" + k + "' for " + family);
    return Status::Ok();
  }
  // The curve name: family plus every option except the one listing the curve's points.
  std::string curve_name(const std::string& point_option) const {
    std::string name = family;
    for (const auto& [k, v] : options)
      if (k != point_option) name += ":" + k + "=" + v;
    return name;
  }
};

StatusOr<Entry> parse_entry(std::string_view text) {
  Entry e;
  e.text = std::string(text);
  std::vector<std::string_view> parts = split(text, ':');
  e.family = std::string(parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    size_t eq = parts[i].find('=');
    if (eq == std::string_view::npos || eq == 0) return e.error("expected key=value, got '" + std::string(parts[i]) + "'");
    std::string key(parts[i].substr(0, eq));
    if (e.has(key)) return e.error("option '" + key + "' given twice");
    e.options.emplace_back(key, std::string(parts[i].substr(eq + 1)));
  }
  return e;
}

Status add_entry(Entry& e, SchemeList& out) {
  using namespace internal;
  if (e.family == "fp16") {
    out.push_back(make_fp16(e.curve_name("")));
  } else if (e.family == "zstd") {
    KVCODEC_ASSIGN_OR_RETURN(std::vector<long long> levels, e.ints("level", "3", 1, 19));
    for (long long lv : levels) out.push_back(make_zstd(e.curve_name("level"), int(lv)));
  } else if (e.family == "int8") {
    out.push_back(make_int8(e.curve_name("")));
  } else if (e.family == "kivi") {
    KVCODEC_ASSIGN_OR_RETURN(std::vector<long long> bits, e.ints("bits", "2/3/4", 1, 8));
    KiviParams p;
    KVCODEC_ASSIGN_OR_RETURN(long long group, e.one_int("group", p.group, 1, 1 << 20));
    KVCODEC_ASSIGN_OR_RETURN(long long residual, e.one_int("residual", p.residual, 0, kMaxTokens));
    p.group = uint32_t(group);
    p.residual = uint32_t(residual);
    for (long long b : bits) {
      p.bits = int(b);
      out.push_back(make_kivi(e.curve_name("bits"), p));
    }
  } else if (e.family == "cachegen") {
    KVCODEC_ASSIGN_OR_RETURN(long long chunk, e.one_int("chunk", 256, 1, kMaxTokens));
    if (e.has("bins")) {  // continuous sweep: one bin count in every layer
      if (e.has("levels")) return e.error("bins and levels exclude each other");
      KVCODEC_ASSIGN_OR_RETURN(std::vector<long long> bins, e.ints("bins", "", 4, 64));
      for (long long b : bins) out.push_back(make_cachegen(e.curve_name("bins") + ":bins", -int(b), uint32_t(chunk)));
    } else {
      KVCODEC_ASSIGN_OR_RETURN(std::vector<long long> levels, e.ints("levels", "1-3", 1, 3));
      for (long long lv : levels) out.push_back(make_cachegen(e.curve_name("levels"), int(lv), uint32_t(chunk)));
    }
  } else if (e.family == "zfp") {
    std::string text = e.value("tol", "4/2/1/0.5/0.25/0.125");
    int index = 0;
    for (std::string_view item : split(text, '/')) {
      double t = 0;
      if (!parse_double(item, t) || !(t > 0.0) || t > 1e6)
        return e.error("tol: expected positive fractions of the RMS a/b/c, got '" + text + "'");
      out.push_back(make_zfp(e.curve_name("tol"), index++, t));
    }
  } else if (e.family == "kvcodec") {
    KvcodecParams params;
    EncodeOptions& o = params.options;
    KVCODEC_ASSIGN_OR_RETURN(std::vector<long long> levels, e.ints("levels", "0-" + std::to_string(kMaxLevel), 0, kMaxLevel));
    KVCODEC_ASSIGN_OR_RETURN(long long chunk, e.one_int("chunk", o.chunk_tokens, 1, kMaxChunkTokens));
    KVCODEC_ASSIGN_OR_RETURN(long long group, e.one_int("group", o.group_tokens, 1, kMaxGroupTokens));
    KVCODEC_ASSIGN_OR_RETURN(long long tables, e.one_int("tables", o.table_groups, 1, kMaxTableGroups));
    // Without step=, the library's default (EncodeOptions), so "kvcodec" measures what users get.
    std::string step = e.value("step", o.step_mode == StepMode::kLayer ? "layer" : "channel");
    if (step != "channel" && step != "layer") return e.error("step: expected channel or layer");
    o.chunk_tokens = uint32_t(chunk);
    o.group_tokens = uint32_t(group);
    o.table_groups = uint32_t(tables);
    o.step_mode = step == "layer" ? StepMode::kLayer : StepMode::kChannel;
    if (e.has("layerlevels")) {
      KVCODEC_ASSIGN_OR_RETURN(std::vector<long long> offsets, e.ints("layerlevels", "", 0, kMaxLevel));
      if (offsets.size() != 3) return e.error("layerlevels: expected three level offsets a/b/c");
      params.layer_levels = std::array<int, 3>{int(offsets[0]), int(offsets[1]), int(offsets[2])};
    }
    for (long long lv : levels) {
      o.level = int(lv);
      out.push_back(make_kvcodec(e.curve_name("levels"), params));
    }
  } else if (e.family == "kvpca") {
    PcaParams p;
    EncodeOptions& o = p.options;
    KVCODEC_ASSIGN_OR_RETURN(std::vector<long long> levels, e.ints("levels", "1-" + std::to_string(kMaxLevel), 1, kMaxLevel));
    KVCODEC_ASSIGN_OR_RETURN(long long tables, e.one_int("tables", o.table_groups, 1, kMaxTableGroups));
    o.table_groups = uint32_t(tables);
    const std::string rope = e.value("rope", "undo"), basis = e.value("basis", "profile");
    if (rope != "undo" && rope != "keep") return e.error("rope: expected undo or keep");
    if (basis != "profile" && basis != "frame") return e.error("basis: expected profile or frame");
    p.undo_rope = rope == "undo";
    p.basis_in_frame = basis == "frame";
    const std::string format = e.value("format", "eval");
    if (format != "eval" && format != "v4") return e.error("format: expected eval or v4");
    p.library = format == "v4";
    if (p.library && p.basis_in_frame) return e.error("format=v4 takes its basis from the profile");
    const std::string models = e.value("models", "off");
    if (models != "off" && models != "on") return e.error("models: expected off or on");
    p.profile_models = models == "on";
    if (p.profile_models && !p.library) return e.error("models=on needs format=v4");
    const std::string rd = e.value("rd", "off");
    if (rd != "off" && rd != "on") return e.error("rd: expected off or on");
    p.rd = rd == "on";
    if (p.rd && !p.profile_models) return e.error("rd=on needs models=on");
    const std::string kw = e.value("kw", "off");
    if (kw != "off" && kw != "on") return e.error("kw: expected off or on");
    p.key_weights = kw == "on";
    if (p.key_weights && (!p.rd || !p.undo_rope)) return e.error("kw=on needs rd=on and keys before RoPE");
    const std::string rdq = e.value("rdq", "off");
    if (rdq != "off" && rdq != "on") return e.error("rdq: expected off or on");
    o.rd_quantize = rdq == "on";
    if (o.rd_quantize && !p.library) return e.error("rdq=on needs format=v4");
    for (long long lv : levels) {
      o.level = int(lv);
      out.push_back(make_kvpca(e.curve_name("levels"), p));
    }
  } else if (e.family == "kvtc") {
    KvtcParams p;
    const std::string text = e.value("bits", "0.5/0.75/1/1.5/2/3/4");
    KVCODEC_ASSIGN_OR_RETURN(long long sink, e.one_int("sink", p.sink, 0, kMaxTokens));
    const std::string rope = e.value("rope", "undo");
    if (rope != "undo" && rope != "keep") return e.error("rope: expected undo or keep");
    p.undo_rope = rope == "undo";
    const std::string range = e.value("range", "minmax");
    if (range != "gauss" && range != "minmax") return e.error("range: expected gauss or minmax");
    p.minmax = range == "minmax";
    p.sink = uint32_t(sink);
    int index = 0;
    for (std::string_view item : split(text, '/')) {
      double b = 0;
      if (!parse_double(item, b) || !(b > 0.0) || b > 8) return e.error("bits: expected averages in (0, 8], got '" + text + "'");
      p.bits = b;
      out.push_back(make_kvtc(e.curve_name("bits"), index++, p));
    }
  } else {
    return e.error("unknown family (known: fp16, zstd, int8, kivi, cachegen, zfp, kvcodec, kvpca, kvtc)");
  }
  return e.check_all_used();
}

}  // namespace

StatusOr<SchemeList> make_schemes(std::string_view list) {
  SchemeList out;
  for (std::string_view item : split(list, ',')) {
    if (item.empty()) return InvalidArgument("empty entry in scheme list '" + std::string(list) + "'");
    KVCODEC_ASSIGN_OR_RETURN(Entry e, parse_entry(item));
    KVCODEC_RETURN_IF_ERROR(add_entry(e, out));
  }
  return out;
}

}  // namespace kvcodec::eval
