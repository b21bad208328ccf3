# Checks that the decoder-only archive defines no encoder symbol (its objects are common, decode
# and io only; an encoder file added to them by mistake fails here).
#   cmake -DNM=... -DLIBRARY=libkvcodec_decoder.a -P no_encoder.cmake
execute_process(COMMAND ${NM} -C --defined-only ${LIBRARY} OUTPUT_VARIABLE symbols RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "no_encoder: ${NM} failed on ${LIBRARY}")
endif()
foreach(symbol "kvcodec::encode_into" "kvcodec::max_encoded_size" "kvcodec::detail::build_layer_model"
               "kvcodec::detail::write_head" "kvcodec::FreqTable::from_counts" "kvcodec::compute_grids")
  string(FIND "${symbols}" " ${symbol}(" at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "no_encoder: ${LIBRARY} defines ${symbol}")
  endif()
endforeach()
string(FIND "${symbols}" " kvcodec::decode_into(" at)
if(at EQUAL -1)
  message(FATAL_ERROR "no_encoder: ${LIBRARY} does not define kvcodec::decode_into (wrong archive?)")
endif()
message(STATUS "no_encoder: ${LIBRARY} has the decoder and no encoder")
