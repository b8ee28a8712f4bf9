/*
 * libcladnet_fast.so in a process that does NOT export OpenSSL's ChaCha20_ctr32 and Poly1305_*:
 * this program links Debian's libcrypto.so.3 (which keeps them internal), as a node built against
 * the system's OpenSSL would. The helper's weak references must then be NULL, cladnet_fast_direct()
 * 0, and a batch asked to go direct must take the EVP path and still seal RFC 8439's section 2.8.2
 * vector. Compiled and run by test/unit/fast-aead.test.ts:
 *   gcc -std=c11 -o fast-fallback-check native/fast-fallback-check.c -lcrypto -ldl && ./fast-fallback-check LIB
 * Prints `direct=D sealed=HEX` (ciphertext then tag), or a line starting `error:` and exits 1.
 */
#include <dlfcn.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

struct job { /* struct cladnet_aead_job */
  uint32_t key, off, len, ad_off, ad_len, ctr_lo, ctr_hi;
  int32_t result;
  uint32_t nonce0, reserved;
};
struct key { /* struct cladnet_aead_key */
  const unsigned char *key;
  EVP_CIPHER_CTX *seal, *open;
};
typedef uint32_t (*batch_fn)(unsigned char *, struct job *, uint32_t, const struct key *, uint32_t, uint32_t, uint32_t);

static int fail(const char *what) {
  printf("error: %s\n", what);
  return 1;
}

int main(int argc, char **argv) {
  static const char plain[] = "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
  static const unsigned char ad[12] = {0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7};
  unsigned char k[32], mem[512];
  uint32_t plen = (uint32_t)strlen(plain);
  if (argc != 2) return fail("usage: fast-fallback-check LIB");
  for (int i = 0; i < 32; i++) k[i] = (unsigned char)(0x80 + i);
  void *lib = dlopen(argv[1], RTLD_NOW);
  if (lib == NULL) return fail(dlerror());
  int (*direct)(void) = (int (*)(void))dlsym(lib, "cladnet_fast_direct");
  batch_fn seal = (batch_fn)dlsym(lib, "cladnet_seal_batch");
  if (direct == NULL || seal == NULL) return fail("symbols missing");
  struct key keys[1] = {{k, EVP_CIPHER_CTX_new(), NULL}};
  if (keys[0].seal == NULL || EVP_CipherInit_ex(keys[0].seal, EVP_chacha20_poly1305(), NULL, k, NULL, 1) != 1) return fail("EVP context");
  memcpy(mem, ad, sizeof ad);
  memcpy(mem + sizeof ad, plain, plen);
  /* nonce 07000000 40414243 44454647 */
  struct job j = {0, sizeof ad, plen, 0, sizeof ad, 0x43424140u, 0x47464544u, 0, 7, 0};
  if (seal(mem, &j, 1, keys, 1, 0, 1 /* CLADNET_DIRECT */) != 0 || j.result != (int32_t)plen + 16) return fail("seal failed");
  printf("direct=%d sealed=", direct());
  for (uint32_t i = 0; i < plen + 16; i++) printf("%02x", mem[sizeof ad + i]);
  printf("\n");
  EVP_CIPHER_CTX_free(keys[0].seal);
  return 0;
}
