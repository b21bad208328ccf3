# The `downstream` test: install this build to temporary prefixes and use it from a separate
# CMake project through find_package(kvcodec COMPONENTS ...) (tests/downstream/). It also checks
# that exactly the public headers are installed: those of include/kvcodec for the core, plus
# src/stream/include and (CUDA builds only) cuda/include for the built components.
set(KVCODEC_DOWNSTREAM_LINK_FLAGS "")
if(KVCODEC_SANITIZE)  # an instrumented static library needs the sanitizer runtimes at link time
  set(KVCODEC_DOWNSTREAM_LINK_FLAGS "-fsanitize=address,undefined")
endif()
file(GLOB core_headers RELATIVE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}/include/kvcodec/*.hpp
     ${PROJECT_SOURCE_DIR}/include/kvcodec/*.h)
set(components "")
set(component_headers "")
foreach(component stream cuda)
  set(dir ${PROJECT_SOURCE_DIR}/src/${component}/include)
  if(component STREQUAL "cuda")
    set(dir ${PROJECT_SOURCE_DIR}/cuda/include)
  endif()
  if(TARGET kvcodec_${component})
    file(GLOB headers RELATIVE ${dir} ${dir}/kvcodec/*.hpp)
    list(APPEND components ${component})
    list(APPEND component_headers ${headers})
  endif()
endforeach()
# Lists travel comma-separated (a ';' would split the test's command line).
string(REPLACE ";" "," core_headers "${core_headers}")
string(REPLACE ";" "," components "${components}")
string(REPLACE ";" "," component_headers "${component_headers}")
add_test(NAME downstream
  COMMAND ${CMAKE_COMMAND}
    "-DKVCODEC_BUILD_DIR=${PROJECT_BINARY_DIR}"
    "-DSOURCE_DIR=${CMAKE_CURRENT_SOURCE_DIR}/downstream"
    "-DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/downstream"
    "-DGENERATOR=${CMAKE_GENERATOR}"
    "-DCXX=${CMAKE_CXX_COMPILER}"
    "-DLINK_FLAGS=${KVCODEC_DOWNSTREAM_LINK_FLAGS}"
    "-DCORE_HEADERS=${core_headers}"
    "-DCOMPONENTS=${components}"
    "-DCOMPONENT_HEADERS=${component_headers}"
    -P ${CMAKE_CURRENT_SOURCE_DIR}/downstream/run.cmake)
set_tests_properties(downstream PROPERTIES TIMEOUT 600)
