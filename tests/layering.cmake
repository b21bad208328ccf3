# The `layering` test: the allowed dependencies between the parts of the tree (docs/design.md,
# "Architecture"), checked on every #include "..." of the sources:
#   src/common       -> common, the core's public headers
#   src/encode       -> common, encode, the core's public headers   (never decode)
#   src/decode       -> common, decode, the core's public headers   (never encode)
#   src/io           -> common, io, the core's public headers
#   cuda             -> the core (public and private), its own headers (never stream/model/eval)
#   src/model        -> the core's public headers, common, its own headers
#   src/stream       -> the core's public headers, common, its own headers (never model/eval)
# "the core's public headers" are the files of include/kvcodec: the codec never includes a
# header of the stream, model or eval libraries, nor of the CLI.
#   cmake -DSOURCE_DIR=<repository root> -P layering.cmake
cmake_policy(VERSION 3.20)
if(NOT DEFINED SOURCE_DIR)
  message(FATAL_ERROR "layering: -DSOURCE_DIR=... is required")
endif()
file(GLOB core_public RELATIVE ${SOURCE_DIR}/include ${SOURCE_DIR}/include/kvcodec/*.hpp)
file(GLOB stream_public RELATIVE ${SOURCE_DIR}/src/stream/include ${SOURCE_DIR}/src/stream/include/kvcodec/*.hpp)
file(GLOB model_public RELATIVE ${SOURCE_DIR}/src/model/include ${SOURCE_DIR}/src/model/include/kvcodec/*.hpp)
file(GLOB cuda_public RELATIVE ${SOURCE_DIR}/cuda/include ${SOURCE_DIR}/cuda/include/kvcodec/*.hpp)

set(errors "")
# check(dir allowed-prefixes allowed-public-headers): every quoted include of the files under
# dir is a private header of an allowed part ("common/", ...), an allowed public header, or a
# file next to the includer.
function(check dir prefixes public)
  file(GLOB_RECURSE files ${SOURCE_DIR}/${dir}/*.hpp ${SOURCE_DIR}/${dir}/*.cpp ${SOURCE_DIR}/${dir}/*.cu)
  foreach(file ${files})
    get_filename_component(here ${file} DIRECTORY)
    file(STRINGS ${file} lines REGEX "^#[ \t]*include[ \t]*\"")
    foreach(line ${lines})
      string(REGEX REPLACE "^#[ \t]*include[ \t]*\"([^\"]+)\".*" "\\1" inc "${line}")
      set(ok OFF)
      if(inc IN_LIST public OR EXISTS ${here}/${inc})
        set(ok ON)
      endif()
      foreach(prefix ${prefixes})
        if(inc MATCHES "^${prefix}/")
          set(ok ON)
        endif()
      endforeach()
      if(NOT ok)
        file(RELATIVE_PATH rel ${SOURCE_DIR} ${file})
        list(APPEND errors "${rel} includes \"${inc}\"")
      endif()
    endforeach()
  endforeach()
  set(errors "${errors}" PARENT_SCOPE)
endfunction()

check(src/common "common" "${core_public}")
check(src/encode "common;encode" "${core_public}")
check(src/decode "common;decode" "${core_public}")
check(src/io "common;io" "${core_public}")
check(cuda "common;encode;decode" "${core_public};${cuda_public}")
check(src/model "common" "${core_public};${model_public}")
check(src/stream "common" "${core_public};${stream_public}")

if(errors)
  string(REPLACE ";" "\n  " errors "${errors}")
  message(FATAL_ERROR "layering: includes that cross the allowed dependencies:\n  ${errors}")
endif()
message(STATUS "layering: ok")
