// kvcodec eval: model quality of every compression scheme on real KV caches (eval.hpp).
#include <cstdio>
#include <fstream>
#include <string>

#include "cli.hpp"
#include "commands.hpp"
#include "kvcodec/eval.hpp"

namespace kvcodec::cli {
namespace {

// The options of `kvcodec eval`; the evaluation's settings are bound straight to EvalOptions.
struct EvalArgs {
  eval::EvalOptions eval;
  std::string json, svg;  // --json is required
};

void declare(Command& cmd, EvalArgs& o) {
  eval::EvalOptions& e = o.eval;
  cmd.option("--model", e.model_path, "llama2.c checkpoint (e.g. ../shared/data/models/stories260K.bin)");
  cmd.option("--tokenizer", e.tokenizer, "llama2.c tokenizer .bin, or 'bytes' for byte-level models (default bytes)");
  cmd.option("--text", e.text_path, "text file the contexts are cut from");
  cmd.option("--contexts", e.contexts, "contexts at offsets spread evenly over the text (default 32)", Range{1, 100000});
  cmd.option("--context-tokens", e.context_tokens, "tokens per context, BOS included (default 3/4 of seq_len)",
             Range{0, kMaxTokens});
  cmd.option("--continue-tokens", e.continue_tokens, "continuation tokens scored after each context (default seq_len - context)",
             Range{0, kMaxTokens});
  cmd.option("--schemes", e.schemes, "comma-separated schemes, e.g. kvcodec:levels=2-6,cachegen,kivi (default: all)");
  cmd.option("--threads", e.threads, "contexts evaluated in parallel (default 1)", Range{1, 1024});
  cmd.option("--calib-text", e.calib_text_path,
             "text file(s) the calibrated schemes (kvpca, kvtc) learn from, comma-separated: contexts alternate "
             "between them (default: --text, at other offsets)");
  cmd.option("--calib-contexts", e.calib_contexts, "calibration contexts (default 8)", Range{1, 100000});
  cmd.option("--json", o.json, "write the report as JSON");
  cmd.option("--svg", o.svg, "write the rate-distortion plot as SVG");
}

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
  Command cmd("eval",
              "kvcodec eval --model M.bin --tokenizer T.bin|bytes --text FILE [--contexts N] [--context-tokens N] "
              "[--continue-tokens M] [--schemes LIST] [--threads N] --json OUT.json [--svg OUT.svg]");
  EvalArgs a;
  declare(cmd, a);
  if (auto exit = cmd.parse(argc, argv)) return *exit;
  if (a.eval.model_path.empty() || a.eval.text_path.empty()) return cmd.usage_error("--model and --text are required");
  if (a.json.empty()) return cmd.usage_error("--json is required");
  a.eval.progress = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };

  StatusOr<eval::EvalReport> report = eval::run_eval(a.eval);
  if (!report.ok()) return cmd.fail(report.status());
  std::fputs(eval::report_table(*report).c_str(), stdout);
  if (Status s = write_text(a.json, eval::report_json(*report)); !s.ok()) return cmd.fail(s);
  if (!a.svg.empty())
    if (Status s = write_text(a.svg, eval::report_svg(*report)); !s.ok()) return cmd.fail(s);
  return 0;
}

}  // namespace kvcodec::cli
