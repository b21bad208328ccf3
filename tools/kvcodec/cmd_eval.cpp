// kvcodec eval: model quality of every compression scheme on real KV caches (eval.hpp).
#include <cstdio>
#include <fstream>
#include <string>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/eval.hpp"

namespace kvcodec::cli {
namespace {

Status write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return IoError("cannot create " + path);
  f << text;
  f.close();
  if (!f) return IoError("cannot write " + path);
  return Status::Ok();
}

}  // namespace

int cmd_eval(int argc, char** argv) {
  Args a("eval",
         "kvcodec eval --model M.bin --tokenizer T.bin|bytes --text FILE [--contexts N] [--context-tokens N] "
         "[--continue-tokens M] [--schemes LIST] [--threads N] --json OUT.json [--svg OUT.svg]");
  a.option("--model", "llama2.c checkpoint (e.g. ../shared/data/models/stories260K.bin)")
      .option("--tokenizer", "llama2.c tokenizer .bin, or 'bytes' for byte-level models (default bytes)")
      .option("--text", "text file the contexts are cut from")
      .option("--contexts", "contexts at offsets spread evenly over the text (default 32)")
      .option("--context-tokens", "tokens per context, BOS included (default 3/4 of seq_len)")
      .option("--continue-tokens", "continuation tokens scored after each context (default seq_len - context)")
      .option("--schemes", "comma-separated schemes, e.g. kvcodec:levels=2-6,cachegen,kivi (default: all)")
      .option("--threads", "contexts evaluated in parallel (default 1)")
      .option("--calib-text", "text the calibrated schemes (kvpca, kvtc) learn from (default: --text, other offsets)")
      .option("--calib-contexts", "calibration contexts (default 8)")
      .option("--json", "write the report as JSON")
      .option("--svg", "write the rate-distortion plot as SVG");
  if (!a.parse(argc, argv)) return a.exit_code();

  eval::EvalOptions o;
  o.model_path = a.get("--model");
  o.tokenizer = a.get("--tokenizer", "bytes");
  o.text_path = a.get("--text");
  const int64_t contexts = a.get_int("--contexts", 32);
  const int64_t context_tokens = a.get_int("--context-tokens", 0);
  const int64_t continue_tokens = a.get_int("--continue-tokens", 0);
  const int64_t threads = a.get_int("--threads", 1);
  const int64_t calib_contexts = a.get_int("--calib-contexts", 8);
  o.calib_text_path = a.get("--calib-text");
  o.schemes = a.get("--schemes", std::string(eval::kDefaultSchemes));
  const std::string json_path = a.get("--json"), svg_path = a.get("--svg");
  if (a.failed()) return 2;
  if (o.model_path.empty() || o.text_path.empty()) return a.fail("--model and --text are required");
  if (json_path.empty()) return a.fail("--json is required");
  if (contexts < 1 || contexts > 100000) return a.fail("--contexts must be in 1..100000");
  if (context_tokens < 0 || context_tokens > kMaxTokens || continue_tokens < 0 || continue_tokens > kMaxTokens)
    return a.fail("--context-tokens and --continue-tokens must be positive token counts");
  if (threads < 1 || threads > 1024) return a.fail("--threads must be in 1..1024");
  o.contexts = uint32_t(contexts);
  o.context_tokens = uint32_t(context_tokens);
  o.continue_tokens = uint32_t(continue_tokens);
  o.threads = unsigned(threads);
  if (calib_contexts < 1 || calib_contexts > 100000) return a.fail("--calib-contexts must be in 1..100000");
  o.calib_contexts = uint32_t(calib_contexts);
  o.progress = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };

  StatusOr<eval::EvalReport> report = eval::run_eval(o);
  if (!report.ok()) return a.fail(report.status());
  std::fputs(eval::report_table(*report).c_str(), stdout);
  if (Status s = write_text(json_path, eval::report_json(*report)); !s.ok()) return a.fail(s);
  if (!svg_path.empty())
    if (Status s = write_text(svg_path, eval::report_svg(*report)); !s.ok()) return a.fail(s);
  return 0;
}

}  // namespace kvcodec::cli
