// PLACEHOLDER: replaced by the real subcommand.
#include "cli.hpp"
#include "commands.hpp"

namespace kvcodec::cli {
int cmd_encode(int, char**) { return report("encode", Unavailable("not built yet")); }
}  // namespace kvcodec::cli
