import type { Logger } from '../log';
import type { TrustAnchor } from './cert';
import { revokedKey, tokenRevokedKey } from './keys';
import { revocationOf } from './peers';
import { HostCert, parseRevocationRecord, parseTokenRevocation, RevocationRecord } from './records';
import type { TokenMemory } from './token-memory';

/**
 * The verified revocations one registry holds (part of registry job 5, trust).
 *
 * Sticky: once verified, a revocation stays, whatever etcd does (a delete is warned about and
 * ignored; reloads do not clear it); it is also kept in the peer cache file and read back at
 * start, verified again. Bounded per host name (the oldest dropped first). Invalid records are
 * warned about and counted once per (host name, mod revision).
 */

/** Verified revocations kept per host name (oldest dropped first). */
const MAX_REVOCATIONS_PER_HOST = 16;

export class Revocations {
  private readonly byName = new Map<string, RevocationRecord[]>();
  private readonly warned = new Map<string, string>(); // host name -> mod revision warned about
  /** Set when a revocation was added since the last `clean()`: the cache file should be written. */
  dirty = false;
  /** Distinct (key, mod revision) revocation records ignored as invalid. */
  invalid = 0;

  constructor(
    private readonly network: string,
    private readonly log: Logger,
  ) {}

  /** By host name, for the peer computation (peers.ts). */
  get map(): ReadonlyMap<string, readonly RevocationRecord[]> {
    return this.byName;
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** The revocation covering `cert`, if any. */
  of(cert: HostCert): RevocationRecord | undefined {
    return revocationOf(this.byName, cert);
  }

  count(): number {
    let n = 0;
    for (const l of this.byName.values()) n += l.length;
    return n;
  }

  list(): RevocationRecord[] {
    return [...this.byName.values()].flat();
  }

  clean(): void {
    this.dirty = false;
  }

  /** An etcd value under /revoked/<name>: verified against `trust`; true when it is new. */
  apply(trust: TrustAnchor | null, name: string, value: Buffer | string, modRevision: string): boolean {
    const parsed = parseRevocationRecord(value, { network: this.network, name });
    const error = !parsed.ok ? parsed.error : trust ? trust.verifyRevocation(parsed.value) : 'the network has no trust anchor to verify it against';
    if (error !== null || !parsed.ok) {
      if (this.warned.get(name) !== modRevision) {
        this.warned.set(name, modRevision);
        this.invalid++;
        this.log.warn({ etcdKey: revokedKey(this.network, name), modRevision, error }, 'ignoring invalid revocation');
      }
      return false;
    }
    return this.add(parsed.value);
  }

  /**
   * An etcd value under /tokens-revoked/<id>: verified against `trust` and added to `tokens`
   * (sticky, like host revocations); true when it is new. Invalid ones are warned about once.
   */
  applyToken(trust: TrustAnchor | null, tokens: TokenMemory, token: string, value: Buffer | string, modRevision: string): boolean {
    const r = parseTokenRevocation(value, { network: this.network, token });
    const error = !r.ok ? r.error : trust ? trust.verifyTokenRevocation(r.value) : 'the network has no trust anchor to verify it against';
    if (error !== null || !r.ok) {
      if (this.warned.get(`token:${token}`) !== modRevision) {
        this.warned.set(`token:${token}`, modRevision);
        this.invalid++;
        this.log.warn({ etcdKey: tokenRevokedKey(this.network, token), modRevision, error }, 'ignoring invalid token revocation');
      }
      return false;
    }
    if (!tokens.addRevocation(r.value)) return false;
    this.log.info({ tokenId: r.value.token, revoked: r.value.revoked, kept: r.value.keep.length }, 'join token revoked');
    return true;
  }

  /** Revocations saved with the cache, verified again (a file is no more trusted than etcd). */
  load(trust: TrustAnchor | null, saved: unknown): void {
    if (!trust || !Array.isArray(saved)) return;
    for (const r of saved) {
      const parsed = parseRevocationRecord(JSON.stringify(r), { network: this.network });
      if (parsed.ok && trust.verifyRevocation(parsed.value) === null) this.add(parsed.value);
    }
    this.dirty = false;
  }

  private add(rev: RevocationRecord): boolean {
    const list = this.byName.get(rev.name) ?? [];
    if (list.some((r) => r.signature === rev.signature)) return false;
    list.push(rev);
    if (list.length > MAX_REVOCATIONS_PER_HOST) list.splice(0, list.length - MAX_REVOCATIONS_PER_HOST);
    this.byName.set(rev.name, list);
    this.dirty = true;
    this.log.info({ host: rev.name, serial: rev.serial ?? 'all', revoked: rev.revoked }, 'host certificate revoked');
    return true;
  }
}
