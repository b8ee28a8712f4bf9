/*
 * libcladnet_fast.so: seals and opens a whole batch of packets with ChaCha20-Poly1305 (IETF,
 * 96-bit nonce = 4 zero bytes || 64-bit little-endian counter, as in WireGuard) in ONE call from
 * TypeScript, where the ffi AEAD (src/crypto/aead.ts) makes one koffi call per packet on the
 * libsodium path and five on the OpenSSL path. The packets stay where they lie (the worker's
 * native batch memory); each job names its key, counter and offsets, and gets its own result, so a
 * packet that fails is dropped and counted by the caller, not the batch.
 *
 * The cipher: OpenSSL's (AVX-512 where the CPU has it) for packets of `evp_min` bytes or more,
 * libsodium 1.0.18 (libsodium.so.23) below that. OpenSSL is called one of two ways:
 *  - direct (CLADNET_DIRECT in `flags`, and the process exports the primitives: node's own binary
 *    does, Debian's libcrypto.so.3 does not): the RFC 8439 construction here over OpenSSL's
 *    ChaCha20_ctr32 and Poly1305_Init/Update/Final: one ChaCha20 call per packet up to 960 bytes
 *    and at MTU sizes (`fused`), else two. The EVP layer around the same code makes three (block 0,
 *    the whole blocks, then the last partial one apart, as its streaming API must) and a provider's
 *    parameter lookups per packet (docs/performance.md);
 *  - else EVP, through the key's two contexts.
 * The keys, their OpenSSL contexts and their lifetime stay in TypeScript (src/crypto/aead.ts): this
 * file keeps no state, allocates nothing and never logs.
 *
 * Built by scripts/build-native.sh (scripts/setup.sh and the unit test run it); loaded by
 * src/os/ffi/fast.ts. The layouts below are what that file writes.
 */
#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* libsodium23's ABI (Debian ships the header only in libsodium-dev, which we do not need). */
int crypto_aead_chacha20poly1305_ietf_encrypt_detached(unsigned char *c, unsigned char *mac, unsigned long long *maclen_p,
                                                       const unsigned char *m, unsigned long long mlen, const unsigned char *ad,
                                                       unsigned long long adlen, const unsigned char *nsec,
                                                       const unsigned char *npub, const unsigned char *k);
int crypto_aead_chacha20poly1305_ietf_decrypt_detached(unsigned char *m, unsigned char *nsec, const unsigned char *c,
                                                       unsigned long long clen, const unsigned char *mac, const unsigned char *ad,
                                                       unsigned long long adlen, const unsigned char *npub, const unsigned char *k);
void sodium_memzero(void *pnt, size_t len);

/*
 * OpenSSL's own primitives, as its providers call them (crypto/chacha.h, crypto/poly1305.h; the ABI
 * has not changed since 1.1.0). Not public API, so weak: NULL where the process does not export
 * them, and then the EVP path is taken.
 */
void ChaCha20_ctr32(unsigned char *out, const unsigned char *inp, size_t len, const unsigned int key[8], const unsigned int counter[4])
    __attribute__((weak));
size_t Poly1305_ctx_size(void) __attribute__((weak));
void Poly1305_Init(void *ctx, const unsigned char key[32]) __attribute__((weak));
void Poly1305_Update(void *ctx, const unsigned char *inp, size_t len) __attribute__((weak));
void Poly1305_Final(void *ctx, unsigned char mac[16]) __attribute__((weak));

/* The nonce words, the counter and Poly1305's length block are written in host order. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cladnet_fast.c assumes a little-endian host (x86-64, arm64)"
#endif

#define CLADNET_TAG 16
#define CLADNET_ABI_VERSION 3
/* flags: seal and open with OpenSSL's primitives directly where they are bound. */
#define CLADNET_DIRECT 1u
/* Room for OpenSSL's POLY1305 (248 bytes in 3.0 on x86-64); a larger one takes the EVP path. */
#define POLY_ROOM 512

/* One packet, 40 bytes. Offsets are from `base`; the data is [off, off+len), the tag follows it. */
struct cladnet_aead_job {
  uint32_t key;    /* index into the key table */
  uint32_t off;    /* plaintext (seal) or ciphertext (open) */
  uint32_t len;    /* seal: plaintext length; open: ciphertext + tag length */
  uint32_t ad_off; /* associated data (the wire header) */
  uint32_t ad_len;
  uint32_t ctr_lo; /* counter, low and high 32 bits */
  uint32_t ctr_hi;
  int32_t result; /* out: seal len + 16, open plaintext length; -1 failed (the data is wiped) */
  uint32_t nonce0; /* the nonce's first 4 bytes: 0 on the wire (WireGuard's); tests set the RFC 8439 vector's */
  uint32_t reserved;
};

/* One key, 24 bytes: its 32 bytes (libsodium's guarded memory) and its two OpenSSL contexts. */
struct cladnet_aead_key {
  const unsigned char *key; /* NULL: no key under this index (dropped) */
  EVP_CIPHER_CTX *seal;     /* keyed for sealing, or NULL (then libsodium at every size) */
  EVP_CIPHER_CTX *open;     /* keyed for opening, or NULL */
};

_Static_assert(sizeof(struct cladnet_aead_job) == 40, "job layout");
_Static_assert(sizeof(struct cladnet_aead_key) == 24, "key layout");

int cladnet_fast_abi(void) { return CLADNET_ABI_VERSION; }

/* 1 when the direct path can run in this process (the primitives are bound, the context fits). */
int cladnet_fast_direct(void) {
  return ChaCha20_ctr32 != NULL && Poly1305_ctx_size != NULL && Poly1305_Init != NULL && Poly1305_Update != NULL &&
         Poly1305_Final != NULL && Poly1305_ctx_size() <= POLY_ROOM;
}

/*
 * Up to this many bytes of data, the keystream of block 0 (the Poly1305 key) and of the data come
 * from ONE ChaCha20 call into a stack scratch, where that costs no more of OpenSSL's passes than
 * the data alone: above 512 bytes its AVX-512 code makes 16 blocks (1,024 bytes) a pass, and a
 * 1,420-byte packet's second pass has room for block 0. Else a call for block 0 and one over the
 * data in place. Seal + open, batches of 64, this machine: 64 B 639 -> 420 ns, 1,420 B 1,486 ->
 * 1,445; at 1,000 B (a 65th block starts another pass) 1,107 against 1,337, so not there.
 */
#define FUSE_MAX (2048 - 64)
static const unsigned char zeros[FUSE_MAX + 64];

static int fused(uint32_t len) { return len <= FUSE_MAX && (len == 0 || (len - 1) % 1024 < 1024 - 64); }

/* The nonce as ChaCha20_ctr32 takes it: block counter, then the nonce's three little-endian words. */
static void counter_of(const struct cladnet_aead_job *j, unsigned int ctr[4], unsigned int block) {
  ctr[0] = block;
  ctr[1] = j->nonce0;
  ctr[2] = j->ctr_lo;
  ctr[3] = j->ctr_hi;
}

static void chacha(unsigned char *out, const unsigned char *in, size_t len, const unsigned char *key, const unsigned int ctr[4]) {
  ChaCha20_ctr32(out, in, len, (const unsigned int *)(const void *)key, ctr);
}

/* d ^= k over len bytes (8 at a time; the compiler vectorizes it). */
static void xor_into(unsigned char *d, const unsigned char *k, uint32_t len) {
  uint32_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t a, b;
    memcpy(&a, d + i, 8);
    memcpy(&b, k + i, 8);
    a ^= b;
    memcpy(d + i, &a, 8);
  }
  for (; i < len; i++) d[i] ^= k[i];
}

/*
 * RFC 8439 section 2.8, given Poly1305 keyed with block 0's first 32 bytes: the tag over AD | pad16
 * | C | pad16 | len(AD) | len(C) (64-bit little-endian). Poly1305_Final cleanses the context.
 */
static void poly_finish(void *poly, const unsigned char *ad, uint32_t ad_len, const unsigned char *c, uint32_t c_len,
                        unsigned char tag[CLADNET_TAG]) {
  uint64_t lens[2] = {ad_len, c_len}; /* little-endian host (x86-64, arm64), as the wire wants */
  Poly1305_Update(poly, ad, ad_len);
  Poly1305_Update(poly, zeros, (16 - ad_len % 16) % 16);
  Poly1305_Update(poly, c, c_len);
  Poly1305_Update(poly, zeros, (16 - c_len % 16) % 16);
  Poly1305_Update(poly, (const unsigned char *)lens, sizeof lens);
  Poly1305_Final(poly, tag);
}

/* Keys `poly` from block 0 with its own ChaCha20 call (the path for lengths `fused` refuses). */
static void poly_key_alone(void *poly, const unsigned char *key, const struct cladnet_aead_job *j) {
  unsigned int ctr[4];
  unsigned char block[64];
  counter_of(j, ctr, 0);
  chacha(block, zeros, sizeof block, key, ctr);
  Poly1305_Init(poly, block);
  sodium_memzero(block, sizeof block);
}

/* The data's keystream (block 1 on) XORed over it in place. */
static void xor_alone(unsigned char *p, uint32_t len, const unsigned char *key, const struct cladnet_aead_job *j) {
  unsigned int ctr[4];
  counter_of(j, ctr, 1);
  chacha(p, p, len, key, ctr);
}

static int seal_direct(unsigned char *m, const unsigned char *ad, const struct cladnet_aead_job *j, const unsigned char *key) {
  _Alignas(64) unsigned char poly[POLY_ROOM];
  uint32_t len = j->len;
  if (fused(len)) {
    _Alignas(64) unsigned char ks[FUSE_MAX + 64];
    unsigned int ctr[4];
    counter_of(j, ctr, 0);
    chacha(ks, zeros, 64 + (size_t)len, key, ctr);
    Poly1305_Init(poly, ks);
    xor_into(m, ks + 64, len);
    sodium_memzero(ks, 64 + (size_t)len);
  } else {
    poly_key_alone(poly, key, j);
    xor_alone(m, len, key, j);
  }
  poly_finish(poly, ad, j->ad_len, m, len, m + len);
  return (int)len + CLADNET_TAG;
}

/* Checks the tag before it decrypts anything; a packet that fails is wiped all the same, as the other paths do. */
static int open_direct(unsigned char *c, const unsigned char *ad, const struct cladnet_aead_job *j, const unsigned char *key, uint32_t plen) {
  _Alignas(64) unsigned char poly[POLY_ROOM];
  _Alignas(64) unsigned char ks[FUSE_MAX + 64];
  unsigned char tag[CLADNET_TAG];
  unsigned char diff = 0;
  int fuse = fused(plen);
  if (fuse) {
    unsigned int ctr[4];
    counter_of(j, ctr, 0);
    chacha(ks, zeros, 64 + (size_t)plen, key, ctr);
    Poly1305_Init(poly, ks);
  } else {
    poly_key_alone(poly, key, j);
  }
  poly_finish(poly, ad, j->ad_len, c, plen, tag);
  for (int i = 0; i < CLADNET_TAG; i++) diff |= (unsigned char)(tag[i] ^ c[plen + i]);
  if (diff == 0) {
    if (fuse) xor_into(c, ks + 64, plen);
    else xor_alone(c, plen, key, j);
  } else {
    sodium_memzero(c, plen);
  }
  if (fuse) sodium_memzero(ks, 64 + (size_t)plen);
  return diff == 0 ? (int)plen : -1;
}

static void nonce_of(const struct cladnet_aead_job *j, unsigned char n[12]) {
  memcpy(n, &j->nonce0, 4);
  memcpy(n + 4, &j->ctr_lo, 4); /* x86-64 and arm64: little-endian, as the wire wants */
  memcpy(n + 8, &j->ctr_hi, 4);
}

static const struct cladnet_aead_key *key_of(const struct cladnet_aead_key *keys, uint32_t nkeys, uint32_t k) {
  return k < nkeys && keys[k].key != NULL ? &keys[k] : NULL;
}

static int seal_one(unsigned char *base, struct cladnet_aead_job *j, const struct cladnet_aead_key *k, uint32_t evp_min, int direct) {
  unsigned char nonce[12];
  unsigned char *m = base + j->off;
  const unsigned char *ad = base + j->ad_off;
  int outl;
  if (direct && j->len >= evp_min) return seal_direct(m, ad, j, k->key);
  nonce_of(j, nonce);
  if (k->seal != NULL && j->len >= evp_min) {
    EVP_CIPHER_CTX *c = k->seal;
    if (EVP_CipherInit_ex(c, NULL, NULL, NULL, nonce, -1) == 1 && EVP_CipherUpdate(c, NULL, &outl, ad, (int)j->ad_len) == 1 &&
        EVP_CipherUpdate(c, m, &outl, m, (int)j->len) == 1 && EVP_CipherFinal_ex(c, m + j->len, &outl) == 1 &&
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, CLADNET_TAG, m + j->len) == 1)
      return (int)j->len + CLADNET_TAG;
    return -1;
  }
  if (crypto_aead_chacha20poly1305_ietf_encrypt_detached(m, m + j->len, NULL, m, j->len, ad, j->ad_len, NULL, nonce, k->key) != 0)
    return -1;
  return (int)j->len + CLADNET_TAG;
}

static int open_one(unsigned char *base, struct cladnet_aead_job *j, const struct cladnet_aead_key *k, uint32_t evp_min, int direct) {
  unsigned char nonce[12];
  unsigned char *c = base + j->off;
  const unsigned char *ad = base + j->ad_off;
  uint32_t plen = j->len - CLADNET_TAG;
  int outl;
  if (direct && plen >= evp_min) return open_direct(c, ad, j, k->key, plen);
  nonce_of(j, nonce);
  if (k->open != NULL && plen >= evp_min) {
    /* OpenSSL decrypts before it checks the tag: a packet that fails is wiped, as libsodium does. */
    EVP_CIPHER_CTX *x = k->open;
    int ok = EVP_CipherInit_ex(x, NULL, NULL, NULL, nonce, -1) == 1 && EVP_CipherUpdate(x, NULL, &outl, ad, (int)j->ad_len) == 1 &&
             EVP_CipherUpdate(x, c, &outl, c, (int)plen) == 1 &&
             EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, CLADNET_TAG, c + plen) == 1 && EVP_CipherFinal_ex(x, c + plen, &outl) == 1;
    if (!ok) {
      sodium_memzero(c, plen);
      return -1;
    }
    return (int)plen;
  }
  if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(c, NULL, c, plen, c + plen, ad, j->ad_len, nonce, k->key) != 0) return -1;
  return (int)plen;
}

/* Both directions: each job's result, and a failed seal wiped (a failed open was wiped by open_one). */
static uint32_t run_batch(int seal, unsigned char *base, struct cladnet_aead_job *jobs, uint32_t n, const struct cladnet_aead_key *keys,
                          uint32_t nkeys, uint32_t evp_min, uint32_t flags) {
  uint32_t failed = 0;
  int direct = (flags & CLADNET_DIRECT) != 0 && cladnet_fast_direct();
  for (uint32_t i = 0; i < n; i++) {
    struct cladnet_aead_job *j = &jobs[i];
    const struct cladnet_aead_key *k = key_of(keys, nkeys, j->key);
    if (seal)
      j->result = k != NULL && j->len <= INT32_MAX - CLADNET_TAG ? seal_one(base, j, k, evp_min, direct) : -1;
    else
      j->result = k != NULL && j->len >= CLADNET_TAG && j->len <= INT32_MAX ? open_one(base, j, k, evp_min, direct) : -1;
    if (j->result >= 0) continue;
    if (seal) sodium_memzero(base + j->off, (size_t)j->len + CLADNET_TAG);
    failed++;
  }
  return failed;
}

/*
 * `flags`: CLADNET_DIRECT, or 0 for EVP at `evp_min` and above (the A/B, and the tests of both).
 *
 * Seals jobs[0..n) in place: ciphertext over the plaintext, tag after it. A job that fails (no
 * such key; never seen otherwise) gets -1 and its plaintext and tag room are wiped: the caller
 * drops it and must not seal it again under the same counter. Returns the number that failed.
 */
uint32_t cladnet_seal_batch(unsigned char *base, struct cladnet_aead_job *jobs, uint32_t n, const struct cladnet_aead_key *keys,
                            uint32_t nkeys, uint32_t evp_min, uint32_t flags) {
  return run_batch(1, base, jobs, n, keys, nkeys, evp_min, flags);
}

/*
 * Authenticates and decrypts jobs[0..n) in place. A job that does not authenticate (or names no
 * key, or is shorter than a tag) gets -1 and nothing else about it is reported; it is wiped (the
 * direct path checks the tag first and decrypts nothing of it). Returns the number that failed.
 */
uint32_t cladnet_open_batch(unsigned char *base, struct cladnet_aead_job *jobs, uint32_t n, const struct cladnet_aead_key *keys,
                            uint32_t nkeys, uint32_t evp_min, uint32_t flags) {
  return run_batch(0, base, jobs, n, keys, nkeys, evp_min, flags);
}
