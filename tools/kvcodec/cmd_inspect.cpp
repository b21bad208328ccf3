// PLACEHOLDER: replaced by the real subcommand.
#include "cli.hpp"
#include "commands.hpp"

namespace kvcodec::cli {
int cmd_inspect(int, char**) { return report("inspect", Unavailable("not built yet")); }
}  // namespace kvcodec::cli
