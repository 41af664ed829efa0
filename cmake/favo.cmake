# Helpers shared by every folder's CMakeLists.txt.

# favo_module(NAME PREFIX DEPS...): a static library from every .c file in
# the current folder (and cpu/ for the engine, added by the caller).
function(favo_module name)
  cmake_parse_arguments(M "" "" "SOURCES;DEPS" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.c)
  list(APPEND srcs ${M_SOURCES})
  if(NOT srcs)
    add_library(${name} INTERFACE)
    target_include_directories(${name} INTERFACE ${CMAKE_CURRENT_SOURCE_DIR})
    target_link_libraries(${name} INTERFACE ${M_DEPS})
  else()
    add_library(${name} STATIC ${srcs})
    target_include_directories(${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
    target_link_libraries(${name} PUBLIC ${M_DEPS})
  endif()
endfunction()

# Libraries every test, bench and fuzz target may link against.
set(FAVO_ALL_LIBS favo_dataplane favo_ingress favo_batcher favo_egress
    favo_engine favo_shm CACHE INTERNAL "")
