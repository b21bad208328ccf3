// PLACEHOLDER: replaced by the real subcommand.
#include "cli.hpp"
#include "commands.hpp"

namespace kvcodec::cli {
int cmd_kv_dump(int, char**) { return report("kv-dump", Unavailable("not built yet")); }
}  // namespace kvcodec::cli
