// PLACEHOLDER: replaced by the real subcommand.
#include "cli.hpp"
#include "commands.hpp"

namespace kvcodec::cli {
int cmd_put(int, char**) { return report("put", Unavailable("not built yet")); }
}  // namespace kvcodec::cli
