// PLACEHOLDER: replaced by the real subcommand.
#include "cli.hpp"
#include "commands.hpp"

namespace kvcodec::cli {
int cmd_decode(int, char**) { return report("decode", Unavailable("not built yet")); }
}  // namespace kvcodec::cli
