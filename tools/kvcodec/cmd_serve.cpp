// PLACEHOLDER: replaced by the real subcommand.
#include "cli.hpp"
#include "commands.hpp"

namespace kvcodec::cli {
int cmd_serve(int, char**) { return report("serve", Unavailable("not built yet")); }
}  // namespace kvcodec::cli
