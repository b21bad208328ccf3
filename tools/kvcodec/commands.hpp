// Subcommands of the `kvcodec` program. Each returns the process exit code; on error it has
// already printed one line "kvcodec <cmd>: error: ..." to stderr (see cli.hpp).
#pragma once

namespace kvcodec::cli {

int cmd_encode(int argc, char** argv);
int cmd_decode(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_kv_dump(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_put(int argc, char** argv);
int cmd_serve(int argc, char** argv);
int cmd_fetch(int argc, char** argv);
int cmd_sweep(int argc, char** argv);
int cmd_store(int argc, char** argv);
int cmd_loadgen(int argc, char** argv);
int cmd_demo(int argc, char** argv);
int cmd_calibrate(int argc, char** argv);

}  // namespace kvcodec::cli
