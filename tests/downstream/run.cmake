# The `downstream` ctest test. Installs the main build into fresh prefixes and checks
#   1. a core-only install (`--component core`): exactly the core's public headers are
#      installed, tests/downstream builds and runs against it, and asking it for a component
#      that is not installed fails at find_package;
#   2. a full install: exactly the public headers of the built components (no private header,
#      no cuda.hpp in a CPU-only build, no header that includes a CUDA header), and
#      tests/downstream builds and runs with every built component.
#   cmake -DKVCODEC_BUILD_DIR=... -DSOURCE_DIR=... -DWORK_DIR=... -DGENERATOR=... -DCXX=...
#         -DCORE_HEADERS=a,b -DCOMPONENTS=stream,cuda -DCOMPONENT_HEADERS=c,d [-DLINK_FLAGS=...]
#         -P run.cmake
cmake_policy(VERSION 3.20)
foreach(var KVCODEC_BUILD_DIR SOURCE_DIR WORK_DIR GENERATOR CXX CORE_HEADERS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run.cmake: -D${var}=... is required")
  endif()
endforeach()

foreach(var CORE_HEADERS COMPONENTS COMPONENT_HEADERS)
  string(REPLACE "," ";" ${var} "${${var}}")
endforeach()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "downstream: ${what} failed (${rc})")
  endif()
endfunction()

# The installed headers under prefix/include must be exactly `expected` (paths like
# kvcodec/codec.hpp), and none may include a CUDA header.
function(check_headers prefix expected)
  file(GLOB_RECURSE installed RELATIVE "${prefix}/include" "${prefix}/include/*")
  list(SORT installed)
  list(SORT expected)
  if(NOT installed STREQUAL expected)
    message(FATAL_ERROR "downstream: installed headers in ${prefix}:\n  ${installed}\n"
                        "expected exactly:\n  ${expected}")
  endif()
  foreach(header ${installed})
    file(STRINGS "${prefix}/include/${header}" cuda_includes REGEX "#[ \t]*include[ \t]*[<\"]cuda")
    if(cuda_includes)
      message(FATAL_ERROR "downstream: installed header ${header} includes a CUDA header")
    endif()
  endforeach()
endfunction()

# Configures, builds and runs tests/downstream against `prefix` with `components`.
function(build_and_run name prefix components)
  set(build "${WORK_DIR}/build-${name}")
  # CMAKE_FIND_USE_PACKAGE_REGISTRY=OFF and the explicit prefix: kvcodec must come from the install.
  run_step("configure (${name})" "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${build}" -G "${GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${prefix}
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF "-DCMAKE_EXE_LINKER_FLAGS=${LINK_FLAGS}"
    "-DKVCODEC_COMPONENTS=${components}")
  run_step("build (${name})" "${CMAKE_COMMAND}" --build "${build}")
  run_step("run (${name})" "${build}/downstream")
  run_step("run C (${name})" "${build}/downstream_c")
  foreach(component ${components})
    run_step("run (${name}, ${component})" "${build}/downstream_${component}")
  endforeach()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")

# 1. The core component alone.
set(core_prefix "${WORK_DIR}/prefix-core")
run_step("install core" "${CMAKE_COMMAND}" --install "${KVCODEC_BUILD_DIR}" --prefix "${core_prefix}"
  --component core)
check_headers("${core_prefix}" "${CORE_HEADERS}")
build_and_run(core "${core_prefix}" "")
foreach(component ${COMPONENTS})
  execute_process(COMMAND "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${WORK_DIR}/build-missing-${component}"
      -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${core_prefix}
      -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF "-DKVCODEC_COMPONENTS=${component}"
    RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(rc EQUAL 0)
    message(FATAL_ERROR "downstream: find_package found component '${component}' in a core-only install")
  endif()
endforeach()

# 2. Everything this build installs.
set(prefix "${WORK_DIR}/prefix")
run_step("install" "${CMAKE_COMMAND}" --install "${KVCODEC_BUILD_DIR}" --prefix "${prefix}")
check_headers("${prefix}" "${CORE_HEADERS};${COMPONENT_HEADERS}")
build_and_run(all "${prefix}" "${COMPONENTS}")
message(STATUS "downstream: ok (core; components: ${COMPONENTS})")
