// PLACEHOLDER: replaced by the real subcommand.
#include "cli.hpp"
#include "commands.hpp"

namespace kvcodec::cli {
int cmd_bench(int, char**) { return report("bench", Unavailable("not built yet")); }
}  // namespace kvcodec::cli
