# `cmake --install` of this build, checked (tests/CMakeLists.txt runs it with cmake -P):
#   1. into a temp prefix: exactly the expected files (no test or bench binary), the installed
#      keygate and keygatectl run --help, and the unit's ExecStart= names the installed keygate
#      (the unit is written at install time, from that install's prefix);
#   2. with the configured (default) prefix under DESTDIR, as a package build stages it: the
#      unit names <default prefix>/bin/keygate, where the binary lands once unpacked;
#   3. `systemd-analyze verify` on the installed units (the service and its two socket units),
#      when that tool exists.
# Arguments (-D): BUILD_DIR, WORK_DIR (emptied first, removed at the end), DEFAULT_PREFIX,
# BINDIR, DOCDIR, UNIT_DIR (as configured, relative to the prefix), SYSTEMD_ANALYZE (a path or
# empty).
cmake_minimum_required(VERSION 3.25)

foreach(arg BUILD_DIR WORK_DIR DEFAULT_PREFIX BINDIR DOCDIR UNIT_DIR)
  if(NOT DEFINED ${arg} OR "${${arg}}" STREQUAL "")
    message(FATAL_ERROR "install_test.cmake: -D${arg}= is required")
  endif()
endforeach()

set(failures 0)
macro(fail message)
  message(SEND_ERROR "FAILED: ${message}")
  math(EXPR failures "${failures} + 1")
endmacro()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

# --- 1. A temp prefix ---------------------------------------------------------------------
set(prefix "${WORK_DIR}/prefix")
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${prefix}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install --prefix failed (${rc}):\n${out}\n${err}")
endif()

set(expected
    "${prefix}/${BINDIR}/keygate"
    "${prefix}/${BINDIR}/keygatectl"
    "${prefix}/${UNIT_DIR}/keygate.service"
    "${prefix}/${UNIT_DIR}/keygate.socket"
    "${prefix}/${UNIT_DIR}/keygate-admin.socket"
    "${prefix}/${DOCDIR}/keygate.toml.example"
    "${prefix}/${DOCDIR}/README.md"
    "${prefix}/${DOCDIR}/operations.md"
    "${prefix}/${DOCDIR}/configuration.md"
    "${prefix}/${DOCDIR}/proxies.md"
    "${prefix}/${DOCDIR}/openapi.yaml")
file(GLOB_RECURSE installed LIST_DIRECTORIES false "${prefix}/*")
list(SORT installed)
list(SORT expected)
if(NOT ("${installed}" STREQUAL "${expected}"))
  fail("installed files differ from the expected ones:\n  installed: ${installed}\n  expected:  ${expected}")
endif()

foreach(tool keygate keygatectl)
  execute_process(COMMAND "${prefix}/${BINDIR}/${tool}" --help
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
  if(NOT (rc EQUAL 0))
    fail("installed ${tool} --help exited ${rc}: ${err}")
  endif()
  string(FIND "${out}" "${tool}" at)
  if(NOT (at GREATER -1))
    fail("installed ${tool} --help does not name itself:\n${out}")
  endif()
endforeach()

file(READ "${prefix}/${UNIT_DIR}/keygate.service" unit)
string(FIND "${unit}" "\nExecStart=${prefix}/${BINDIR}/keygate --config /etc/keygate/keygate.toml\n"
       at)
if(NOT (at GREATER -1))
  fail("the unit's ExecStart= is not the installed keygate ${prefix}/${BINDIR}/keygate:\n${unit}")
endif()
string(FIND "${unit}" "\nDocumentation=file://${prefix}/${DOCDIR}/operations.md\n" at)
if(NOT (at GREATER -1))
  fail("the unit's Documentation= is not the installed operations.md")
endif()
string(FIND "${unit}" "@KEYGATE_" at)
if(NOT (at EQUAL -1))
  fail("the unit still holds a placeholder:\n${unit}")
endif()
foreach(line "Type=notify" "ExecReload=/bin/kill -HUP $MAINPID" "KillMode=mixed"
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" "DynamicUser=yes"
        "StateDirectory=keygate" "LimitNOFILE=1048576" "LimitMEMLOCK=512M")
  string(FIND "${unit}" "\n${line}\n" at)
  if(NOT (at GREATER -1))
    fail("the unit lacks ${line}")
  endif()
endforeach()
string(FIND "${unit}" "\nSystemCallFilter=" at)
if(NOT (at EQUAL -1))
  fail("the unit filters system calls: io_uring_setup/enter/register would go")
endif()

# The socket units: named sockets on keygate's default addresses, passed to keygate.service.
# The service itself neither wants nor requires them (Sockets= would make every start of it
# start keygate.socket too, binding 127.0.0.1:8080 whatever the config's listen says): it runs
# without them.
foreach(pair "keygate.socket|127.0.0.1:8080|data" "keygate-admin.socket|127.0.0.1:8081|admin")
  string(REPLACE "|" ";" pair "${pair}")
  list(GET pair 0 socket_unit)
  list(GET pair 1 address)
  list(GET pair 2 name)
  file(READ "${prefix}/${UNIT_DIR}/${socket_unit}" text)
  foreach(line "ListenStream=${address}" "FileDescriptorName=${name}" "Service=keygate.service"
          "ReusePort=no" "Documentation=file://${prefix}/${DOCDIR}/operations.md")
    string(FIND "${text}" "\n${line}\n" at)
    if(NOT (at GREATER -1))
      fail("${socket_unit} lacks ${line}")
    endif()
  endforeach()
endforeach()
foreach(line "Sockets=" "Requires=keygate" "Wants=keygate")
  string(FIND "${unit}" "\n${line}" at)
  if(NOT (at EQUAL -1))
    fail("keygate.service has ${line}...: it must run without its socket units")
  endif()
endforeach()

# TimeoutStopSec= above the default drain (limits.drain_timeout_ms, 10 s), with room for what
# keygate does after the drain deadline.
string(REGEX MATCH "\nTimeoutStopSec=([0-9]+)s\n" _ "${unit}")
if(NOT (CMAKE_MATCH_1 GREATER_EQUAL 20))
  fail("TimeoutStopSec= is not at least 20 s: '${CMAKE_MATCH_1}'")
endif()

# --- 2. The configured prefix, staged under DESTDIR ----------------------------------------
set(stage "${WORK_DIR}/stage")
execute_process(COMMAND "${CMAKE_COMMAND}" -E env "DESTDIR=${stage}"
                        "${CMAKE_COMMAND}" --install "${BUILD_DIR}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "DESTDIR=... cmake --install failed (${rc}):\n${out}\n${err}")
endif()
if(NOT (EXISTS "${stage}${DEFAULT_PREFIX}/${BINDIR}/keygate"))
  fail("no keygate at ${stage}${DEFAULT_PREFIX}/${BINDIR}/keygate")
endif()
file(READ "${stage}${DEFAULT_PREFIX}/${UNIT_DIR}/keygate.service" staged_unit)
string(FIND "${staged_unit}"
       "\nExecStart=${DEFAULT_PREFIX}/${BINDIR}/keygate --config /etc/keygate/keygate.toml\n" at)
if(NOT (at GREATER -1))
  fail("the staged unit's ExecStart= is not ${DEFAULT_PREFIX}/${BINDIR}/keygate:\n${staged_unit}")
endif()

# --- 3. systemd-analyze verify ------------------------------------------------------------
if(SYSTEMD_ANALYZE)
  execute_process(COMMAND "${SYSTEMD_ANALYZE}" verify "${prefix}/${UNIT_DIR}/keygate.service"
                          "${prefix}/${UNIT_DIR}/keygate.socket"
                          "${prefix}/${UNIT_DIR}/keygate-admin.socket"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
  # Only what it says about keygate's units counts: in a container without a running systemd
  # it may complain about other units it loads along (dependencies of the default target).
  string(REGEX MATCHALL "[^\n]*keygate(-admin)?\\.(service|socket)[^\n]*" said "${out}\n${err}")
  if(NOT ("${said}" STREQUAL ""))
    fail("systemd-analyze verify: ${said}")
  endif()
else()
  message(STATUS "systemd-analyze not found: the unit is not verified")
endif()

if(failures GREATER 0)
  message(FATAL_ERROR "${failures} check(s) failed")
endif()
file(REMOVE_RECURSE "${WORK_DIR}")
message(STATUS "install layout: ok")
