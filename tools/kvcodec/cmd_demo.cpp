// PLACEHOLDER: replaced by the real subcommand.
#include "cli.hpp"
#include "commands.hpp"

namespace kvcodec::cli {
int cmd_demo(int, char**) { return report("demo", Unavailable("not built yet")); }
}  // namespace kvcodec::cli
