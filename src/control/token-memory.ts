import { tokenRevokes, type TrustAnchor } from './cert';
import { HostCert, parseTokenRevocation, serializeTokenRevocation, TokenRevocation } from './records';

/**
 * What an agent remembers about join tokens (peers.ts uses it; the registry feeds it and keeps it
 * in the peer cache file):
 *
 * - first seen per (token, use): the serial of the first certificate accepted for that use. A
 *   later certificate for the same use (someone who kept or stole the token's secret and signed
 *   another host) is refused, whatever etcd says. Sticky like revocations: reloads, etcd deletes
 *   and the expiry of the first certificate do not free the use.
 * - token revocations (verified, signed by the network key), also sticky.
 *
 * Bounded: at most `max` uses (the oldest go first) and 8 revocations per token.
 */
export const MAX_TOKEN_USES_REMEMBERED = 65536;
const MAX_REVOCATIONS_PER_TOKEN = 8;

export function useId(c: Pick<HostCert, 'token' | 'use'>): string {
  return `${c.token}/${c.use}`;
}

export class TokenMemory {
  private readonly first = new Map<string, string>(); // "token/use" -> serial
  private readonly revoked = new Map<string, TokenRevocation[]>(); // token -> revocations
  /** Set when anything changed since the last `clean()`: the cache file should be written. */
  dirty = false;

  constructor(private readonly max = MAX_TOKEN_USES_REMEMBERED) {}

  /** The serial first seen for each "token/use". */
  get uses(): ReadonlyMap<string, string> {
    return this.first;
  }

  /** Binds the use of each token certificate not bound yet (they just passed every check). */
  bind(certs: Iterable<HostCert>): void {
    for (const c of certs) {
      if (c.token === undefined) continue;
      const id = useId(c);
      if (this.first.has(id)) continue;
      this.first.set(id, c.serial);
      this.dirty = true;
      if (this.first.size > this.max) this.first.delete(this.first.keys().next().value!);
    }
  }

  /** Adds a verified revocation; true when it is new. */
  addRevocation(rev: TokenRevocation): boolean {
    const list = this.revoked.get(rev.token) ?? [];
    if (list.some((r) => r.signature === rev.signature)) return false;
    list.push(rev);
    if (list.length > MAX_REVOCATIONS_PER_TOKEN) list.splice(0, list.length - MAX_REVOCATIONS_PER_TOKEN);
    this.revoked.set(rev.token, list);
    this.dirty = true;
    return true;
  }

  /** The revocation covering `cert` (any of its token's revocations that does not keep it), if any. */
  revocationOf(cert: HostCert): TokenRevocation | undefined {
    if (cert.token === undefined) return undefined;
    return this.revoked.get(cert.token)?.find((r) => tokenRevokes(r, cert));
  }

  clean(): void {
    this.dirty = false;
  }

  toJSON(): { uses: [string, string][]; revocations: unknown[] } {
    return { uses: [...this.first.entries()], revocations: [...this.revoked.values()].flat().map((r) => JSON.parse(serializeTokenRevocation(r)) as unknown) };
  }

  /** Reads what `toJSON` saved; revocations are verified again, malformed entries dropped. */
  load(saved: unknown, anchor: TrustAnchor): void {
    if (typeof saved !== 'object' || saved === null) return;
    const s = saved as { uses?: unknown; revocations?: unknown };
    if (Array.isArray(s.uses)) {
      for (const e of s.uses) {
        if (!Array.isArray(e) || e.length !== 2) continue;
        const [id, serial] = e as [unknown, unknown];
        if (typeof id === 'string' && /^[0-9a-f]{32}\/[0-9]{1,4}$/.test(id) && typeof serial === 'string' && /^[0-9a-f]{32}$/.test(serial) && !this.first.has(id)) {
          this.first.set(id, serial);
        }
      }
    }
    if (Array.isArray(s.revocations)) {
      for (const r of s.revocations) {
        const p = parseTokenRevocation(JSON.stringify(r), { network: anchor.network });
        if (p.ok && anchor.verifyTokenRevocation(p.value) === null) this.addRevocation(p.value);
      }
    }
    this.dirty = false;
  }
}
