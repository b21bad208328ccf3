// PLACEHOLDER: replaced by the real subcommand.
#include "cli.hpp"
#include "commands.hpp"

namespace kvcodec::cli {
int cmd_sweep(int, char**) { return report("sweep", Unavailable("not built yet")); }
}  // namespace kvcodec::cli
