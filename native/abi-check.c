/*
 * abi-check: prints, as one JSON object, what this machine's C headers say about every struct
 * layout and constant listed in cladnet_abi.h. test/unit/native-abi.test.ts compiles it with the
 * system compiler (cc), runs it and compares each number with the TypeScript side.
 *
 *   cc -std=c11 -Wall -Wextra -Werror -o abi-check native/abi-check.c && ./abi-check
 *
 * {"target": {...}, "structs": {"iovec": {"size": 16, "align": 8}, ...},
 *  "fields": {"iovec.iov_len": {"offset": 8, "size": 8}, ...},
 *  "sizes": {"CMSG_SPACE_U16": 24, ...}, "constants": {"AF_INET": 2, ...}}
 */
#define _GNU_SOURCE 1
#include "cladnet_abi.h"

#include <stdalign.h>
#include <stdio.h>

static int first;    /* no key printed yet in this section */
static int sections; /* sections opened so far */

static void key(const char *k) {
  printf("%s\n    \"%s\": ", first ? "" : ",", k);
  first = 0;
}

static void section(const char *name) {
  printf("%s\n  \"%s\": {", sections++ ? "\n  }," : "", name);
  first = 1;
}

#define PRINT_STRUCT(name, type) \
  key(#name);                    \
  printf("{\"size\": %zu, \"align\": %zu}", sizeof(type), alignof(type));

#define PRINT_FIELD(name, type, field) \
  key(#name "." #field);               \
  printf("{\"offset\": %zu, \"size\": %zu}", offsetof(type, field), sizeof(((type *)0)->field));

#define PRINT_SIZE(name, value) \
  key(#name);                   \
  printf("%zu", (size_t)(value));

#define PRINT_CONSTANT(name) \
  key(#name);                \
  printf("%lld", (long long)(name));

int main(void) {
  printf("{");
  section("target");
  key("pointer");
  printf("%zu", sizeof(void *));
  key("long");
  printf("%zu", sizeof(long));
  key("littleEndian");
  {
    const unsigned short one = 1;
    printf("%s", *(const unsigned char *)&one == 1 ? "true" : "false");
  }
  section("structs");
  CLADNET_ABI_STRUCTS(PRINT_STRUCT)
  section("fields");
  CLADNET_ABI_FIELDS(PRINT_FIELD)
  section("sizes");
  CLADNET_ABI_SIZES(PRINT_SIZE)
  section("constants");
  CLADNET_ABI_CONSTANTS(PRINT_CONSTANT)
  printf("\n  }\n}\n");
  return 0;
}
