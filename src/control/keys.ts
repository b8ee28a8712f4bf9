import { CladnetError } from '../errors';
import { formatIpv4, parseIpv4 } from '../util/ipv4';

/**
 * The etcd key layout (fixed; other agents and tools read it):
 *
 *   /cladnet/v1/networks/<net>                 NetworkSpec JSON
 *   /cladnet/v1/networks/<net>/hosts/<name>    HostRecord JSON (kept across restarts)
 *   /cladnet/v1/networks/<net>/leases/<ip>     LeaseRecord JSON (overlay IP lease, create-if-absent)
 *   /cladnet/v1/networks/<net>/alive/<name>    liveness, bound to an etcd lease
 *   /cladnet/v1/networks/<net>/revoked/<name>  RevocationRecord JSON, signed by the network key
 *   /cladnet/v1/networks/<net>/issued/<name>   HostCert JSON: the newest certificate `host issue`
 *                                              signed for <name> (signed; agents ignore it)
 *   /cladnet/v1/networks/<net>/tokens/<id>     TokenGrant JSON: a join token's public half
 *                                              (`token create`; for `token list`, grants nothing)
 *   /cladnet/v1/networks/<net>/token-uses/<id>-<use>
 *                                              HostCert JSON: the certificate that consumed use
 *                                              <use> of token <id> (create-if-absent txn)
 *   /cladnet/v1/networks/<net>/tokens-revoked/<id>
 *                                              TokenRevocation JSON, signed by the network key
 *   /cladnet/v1/networks/<net>/policy          NetworkPolicy JSON, signed by the network key
 *                                              (security groups: src/control/policy.ts)
 *
 * and, outside the networks' prefix so that agents watching their network never receive them:
 *
 *   /cladnet/v1/views/<net>/<name>             ViewRecord JSON: what <name> sees of its peers
 *                                              (state, RTT, path), on its liveness lease; read
 *                                              by `cladnet dashboard` only (grants nothing)
 *
 * A network's spec key is also the prefix of its children, so "every key under networks/" is NOT
 * "every network": use `parseKey` and keep only `kind === 'network'`.
 *
 * Builders validate their arguments: a name with a '/' in it would otherwise address another key.
 */
export const NETWORKS_ROOT = '/cladnet/v1/networks/';

/** Network and host names: DNS-label-like, lower case, 1..63 characters. */
export const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export function isValidName(s: unknown): s is string {
  return typeof s === 'string' && NAME_RE.test(s);
}

/** Returns `s` when it is a valid name, else throws ECONFIG naming `field`. */
export function checkName(s: unknown, field = 'name'): string {
  if (isValidName(s)) return s;
  const shown = typeof s === 'string' ? JSON.stringify(s) : typeof s;
  throw new CladnetError(
    'ECONFIG',
    `${field}: ${shown} is not a valid name (1-63 of a-z, 0-9, '-', not starting or ending with '-')`,
    { field },
  );
}

function checkIp(ip: string): string {
  const v = parseIpv4(ip);
  if (v === null || formatIpv4(v) !== ip) {
    throw new CladnetError('ECONFIG', `ip: ${JSON.stringify(ip)} is not a dotted IPv4 address`, { field: 'ip' });
  }
  return ip;
}

export function networkKey(net: string): string {
  return NETWORKS_ROOT + checkName(net, 'network');
}

/** Everything that belongs to a network except its spec key (ends with '/'). */
export function networkPrefix(net: string): string {
  return `${networkKey(net)}/`;
}

export function hostsPrefix(net: string): string {
  return `${networkPrefix(net)}hosts/`;
}

export function hostKey(net: string, name: string): string {
  return hostsPrefix(net) + checkName(name, 'host');
}

export function leasesPrefix(net: string): string {
  return `${networkPrefix(net)}leases/`;
}

export function leaseKey(net: string, ip: string): string {
  return leasesPrefix(net) + checkIp(ip);
}

export function alivePrefix(net: string): string {
  return `${networkPrefix(net)}alive/`;
}

export function aliveKey(net: string, name: string): string {
  return alivePrefix(net) + checkName(name, 'host');
}

export function revokedPrefix(net: string): string {
  return `${networkPrefix(net)}revoked/`;
}

export function revokedKey(net: string, name: string): string {
  return revokedPrefix(net) + checkName(name, 'host');
}

export function issuedPrefix(net: string): string {
  return `${networkPrefix(net)}issued/`;
}

export function issuedKey(net: string, name: string): string {
  return issuedPrefix(net) + checkName(name, 'host');
}

/** Root of the hosts' views (views.ts), one folder per network. */
export const VIEWS_ROOT = '/cladnet/v1/views/';

export function viewsPrefix(net: string): string {
  return `${VIEWS_ROOT}${checkName(net, 'network')}/`;
}

export function viewKey(net: string, name: string): string {
  return viewsPrefix(net) + checkName(name, 'host');
}

export function tokensPrefix(net: string): string {
  return `${networkPrefix(net)}tokens/`;
}

export function tokenKey(net: string, id: string): string {
  return tokensPrefix(net) + checkTokenId(id);
}

export function tokenUsesPrefix(net: string, id?: string): string {
  return `${networkPrefix(net)}token-uses/${id === undefined ? '' : `${checkTokenId(id)}-`}`;
}

export function tokenUseKey(net: string, id: string, use: number): string {
  // parseKey reads at most four digits back (uses are capped at MAX_TOKEN_USES, far below)
  if (!Number.isInteger(use) || use < 1 || use > 9999) throw new CladnetError('ECONFIG', `use: ${use} is not an integer in 1..9999`, { field: 'use' });
  return `${tokenUsesPrefix(net, id)}${use}`;
}

export function tokensRevokedPrefix(net: string): string {
  return `${networkPrefix(net)}tokens-revoked/`;
}

export function tokenRevokedKey(net: string, id: string): string {
  return tokensRevokedPrefix(net) + checkTokenId(id);
}

/** The network's policy (one key; a newer signed document replaces it). */
export function policyKey(net: string): string {
  return `${networkPrefix(net)}policy`;
}

const TOKEN_ID = /^[0-9a-f]{32}$/;

function checkTokenId(id: string): string {
  if (!TOKEN_ID.test(id)) throw new CladnetError('ECONFIG', `token: ${JSON.stringify(id)} is not a token id (32 lowercase hex digits)`, { field: 'token' });
  return id;
}

/**
 * Whether `name` matches a token's name pattern: '*' stands for any run (possibly empty) of name
 * characters, everything else for itself. "web-*" matches "web-1" and "web-", never "db-1".
 */
export function matchesNamePattern(pattern: string, name: string): boolean {
  if (!/^[a-z0-9*-]{1,63}$/.test(pattern)) return false; // only name characters and '*': nothing to escape
  return new RegExp(`^${pattern.split('*').join('[a-z0-9-]*')}$`).test(name);
}

export type ParsedKey =
  | { kind: 'network'; network: string }
  | { kind: 'host'; network: string; name: string }
  | { kind: 'lease'; network: string; ip: string }
  | { kind: 'alive'; network: string; name: string }
  | { kind: 'revoked'; network: string; name: string }
  | { kind: 'issued'; network: string; name: string }
  | { kind: 'view'; network: string; name: string }
  | { kind: 'token'; network: string; token: string }
  | { kind: 'tokenUse'; network: string; token: string; use: number }
  | { kind: 'tokenRevoked'; network: string; token: string }
  | { kind: 'policy'; network: string };

/** Classifies a key of the layout above; null for anything else (unknown or malformed keys). */
export function parseKey(key: string | Buffer): ParsedKey | null {
  const k = typeof key === 'string' ? key : key.toString('utf8');
  if (k.startsWith(VIEWS_ROOT)) {
    const [network, name, ...rest] = k.slice(VIEWS_ROOT.length).split('/');
    return rest.length === 0 && isValidName(network) && isValidName(name) ? { kind: 'view', network, name } : null;
  }
  if (!k.startsWith(NETWORKS_ROOT)) return null;
  const parts = k.slice(NETWORKS_ROOT.length).split('/');
  const network = parts[0]!;
  if (!isValidName(network)) return null;
  if (parts.length === 1) return { kind: 'network', network };
  if (parts.length === 2) return parts[1] === 'policy' ? { kind: 'policy', network } : null;
  if (parts.length !== 3) return null;
  const [, kind, leaf] = parts as [string, string, string];
  switch (kind) {
    case 'hosts':
      return isValidName(leaf) ? { kind: 'host', network, name: leaf } : null;
    case 'alive':
      return isValidName(leaf) ? { kind: 'alive', network, name: leaf } : null;
    case 'revoked':
      return isValidName(leaf) ? { kind: 'revoked', network, name: leaf } : null;
    case 'issued':
      return isValidName(leaf) ? { kind: 'issued', network, name: leaf } : null;
    case 'tokens':
      return TOKEN_ID.test(leaf) ? { kind: 'token', network, token: leaf } : null;
    case 'tokens-revoked':
      return TOKEN_ID.test(leaf) ? { kind: 'tokenRevoked', network, token: leaf } : null;
    case 'token-uses': {
      const m = /^([0-9a-f]{32})-([1-9][0-9]{0,3})$/.exec(leaf);
      return m ? { kind: 'tokenUse', network, token: m[1]!, use: Number(m[2]) } : null;
    }
    case 'leases': {
      const v = parseIpv4(leaf);
      return v !== null && formatIpv4(v) === leaf ? { kind: 'lease', network, ip: leaf } : null;
    }
    default:
      return null;
  }
}
