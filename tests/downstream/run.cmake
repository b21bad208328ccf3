# The `downstream` ctest test: installs the main build into a fresh prefix, then configures,
# builds and runs tests/downstream against that prefix only.
#   cmake -DKVCODEC_BUILD_DIR=... -DSOURCE_DIR=... -DWORK_DIR=... -DGENERATOR=... -DCXX=...
#         [-DLINK_FLAGS=...] -P run.cmake
foreach(var KVCODEC_BUILD_DIR SOURCE_DIR WORK_DIR GENERATOR CXX)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run.cmake: -D${var}=... is required")
  endif()
endforeach()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "downstream: ${what} failed (${rc})")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")
run_step("install" "${CMAKE_COMMAND}" --install "${KVCODEC_BUILD_DIR}" --prefix "${prefix}")
# CMAKE_FIND_USE_PACKAGE_REGISTRY=OFF and the explicit prefix: kvcodec must come from the install.
run_step("configure" "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${prefix}
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF "-DCMAKE_EXE_LINKER_FLAGS=${LINK_FLAGS}")
run_step("build" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run_step("run" "${WORK_DIR}/build/downstream")
run_step("run C" "${WORK_DIR}/build/downstream_c")
