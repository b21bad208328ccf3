// PLACEHOLDER: replaced by the real subcommand.
#include "cli.hpp"
#include "commands.hpp"

namespace kvcodec::cli {
int cmd_eval(int, char**) { return report("eval", Unavailable("not built yet")); }
}  // namespace kvcodec::cli
