// PLACEHOLDER: replaced by the real subcommand.
#include "cli.hpp"
#include "commands.hpp"

namespace kvcodec::cli {
int cmd_fetch(int, char**) { return report("fetch", Unavailable("not built yet")); }
}  // namespace kvcodec::cli
