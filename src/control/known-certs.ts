import { HostCert, parseHostCert } from './records';

/**
 * The certificates an agent has accepted, remembered after their records are gone (peers.ts,
 * `knownCerts`): while one is unexpired and unrevoked it still holds its overlay address, so an
 * etcd writer who deletes a holder's record cannot hand the address to a newer certificate. Like
 * revocations, the memory is sticky (reloads and etcd deletes do not clear it), kept in the peer
 * cache file and read back at start; it is bounded (the oldest entries go first). Entries are
 * verified where they are used, never here: a cache file is no more trusted than etcd.
 */
export const MAX_KNOWN_CERTS = 8192;

export class KnownCerts {
  private readonly certs = new Map<string, HostCert>(); // "name/serial" -> certificate, oldest first
  private readonly byIp = new Map<string, Map<string, HostCert>>(); // overlay ip -> "name/serial" -> certificate
  private readonly byName = new Map<string, Map<string, HostCert>>(); // host name -> "name/serial" -> certificate, oldest first
  /** Set when the set changed since the last `clean()`: the cache file should be written. */
  dirty = false;

  constructor(private readonly max = MAX_KNOWN_CERTS) {}

  values(): IterableIterator<HostCert> {
    return this.certs.values();
  }

  /** The remembered certificates for one overlay address. */
  at(overlayIp: string): Iterable<HostCert> {
    return this.byIp.get(overlayIp)?.values() ?? [];
  }

  /** The remembered certificates for one host name, in the order first seen (as in `values()`). */
  named(name: string): Iterable<HostCert> {
    return this.byName.get(name)?.values() ?? [];
  }

  get size(): number {
    return this.certs.size;
  }

  /** Adds certificates that just passed the trust checks. */
  remember(certs: Iterable<HostCert>): void {
    for (const c of certs) {
      const id = `${c.name}/${c.serial}`;
      if (this.certs.has(id)) continue;
      this.certs.set(id, c);
      let group = this.byIp.get(c.overlayIp);
      if (!group) this.byIp.set(c.overlayIp, (group = new Map()));
      group.set(id, c);
      let named = this.byName.get(c.name);
      if (!named) this.byName.set(c.name, (named = new Map()));
      named.set(id, c);
      this.dirty = true;
      if (this.certs.size > this.max) this.drop(this.certs.keys().next().value!);
    }
  }

  /** Forgets certificates expired at `nowMs` or covered by a revocation. */
  prune(nowMs: number, isRevoked: (c: HostCert) => boolean): void {
    for (const [id, c] of this.certs) {
      if (Date.parse(c.notAfter) < nowMs || isRevoked(c)) {
        this.drop(id);
        this.dirty = true;
      }
    }
  }

  private drop(id: string): void {
    const c = this.certs.get(id);
    if (!c) return;
    this.certs.delete(id);
    const group = this.byIp.get(c.overlayIp);
    group?.delete(id);
    if (group?.size === 0) this.byIp.delete(c.overlayIp);
    const named = this.byName.get(c.name);
    named?.delete(id);
    if (named?.size === 0) this.byName.delete(c.name);
  }

  clean(): void {
    this.dirty = false;
  }

  list(): HostCert[] {
    return [...this.certs.values()];
  }

  /** Reads entries saved by `list()` (shape only; what does not parse is dropped). */
  load(saved: unknown, network: string): void {
    if (!Array.isArray(saved)) return;
    const ok: HostCert[] = [];
    for (const raw of saved) {
      const c = parseHostCert((raw ?? null) as object, { network });
      if (c.ok) ok.push(c.value);
    }
    this.remember(ok);
    this.dirty = false;
  }
}
