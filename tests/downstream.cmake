# The `downstream` test: install this build to a temporary prefix and use it from a separate
# CMake project through find_package(kvcodec) (tests/downstream/).
set(KVCODEC_DOWNSTREAM_LINK_FLAGS "")
if(KVCODEC_SANITIZE)  # an instrumented static library needs the sanitizer runtimes at link time
  set(KVCODEC_DOWNSTREAM_LINK_FLAGS "-fsanitize=address,undefined")
endif()
add_test(NAME downstream
  COMMAND ${CMAKE_COMMAND}
    "-DKVCODEC_BUILD_DIR=${PROJECT_BINARY_DIR}"
    "-DSOURCE_DIR=${CMAKE_CURRENT_SOURCE_DIR}/downstream"
    "-DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/downstream"
    "-DGENERATOR=${CMAKE_GENERATOR}"
    "-DCXX=${CMAKE_CXX_COMPILER}"
    "-DLINK_FLAGS=${KVCODEC_DOWNSTREAM_LINK_FLAGS}"
    -P ${CMAKE_CURRENT_SOURCE_DIR}/downstream/run.cmake)
set_tests_properties(downstream PROPERTIES TIMEOUT 300)
