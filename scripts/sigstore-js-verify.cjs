#!/usr/bin/env node
// sigstore-js-verify.cjs verifies a cloche provenance bundle with sigstore-js
// (@sigstore/verify), an implementation of Sigstore verification independent of the Go one
// cloche and cosign use, and then checks what sigstore-js leaves to its caller for a DSSE
// bundle: the payload is an in-toto statement of the expected predicate type whose subjects
// include the SHA-256 of every artifact given.
//
//   key-signed: node sigstore-js-verify.cjs --bundle B --key signing-key.pem.pub ARTIFACT...
//   key-signed and entered in Rekor (cloche run --rekor-url): add --trusted-root trusted_root.json,
//               and the log entry is then required and checked against the root's Rekor logs
//   keyless:    node sigstore-js-verify.cjs --bundle B --trusted-root trusted_root.json \
//                 --certificate-identity-regexp RE --certificate-oidc-issuer ISSUER ARTIFACT...
//
// The @sigstore packages are found through NODE_PATH (docs/interop.md says which versions).
// Exit status 0 means verified; 1 means rejected, with the reason on stderr; 2 is a usage error.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const { bundleFromJSON } = require('@sigstore/bundle');
const { TrustedRoot } = require('@sigstore/protobuf-specs');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

const STATEMENT_TYPE = 'https://in-toto.io/Statement/v1';
const PAYLOAD_TYPE = 'application/vnd.in-toto+json';
const EMPTY_ROOT = { mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1' };

function usage(msg) {
  process.stderr.write(`sigstore-js-verify: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { type: 'https://slsa.dev/provenance/v1', artifacts: [] };
  const flags = {
    '--bundle': 'bundle', '--key': 'key', '--trusted-root': 'trustedRoot', '--type': 'type',
    '--certificate-identity-regexp': 'identity', '--certificate-oidc-issuer': 'issuer',
  };
  for (let i = 0; i < argv.length; i++) {
    const name = flags[argv[i]];
    if (name === undefined) {
      if (argv[i].startsWith('--')) usage(`unknown flag ${argv[i]}`);
      opts.artifacts.push(argv[i]);
      continue;
    }
    if (i + 1 >= argv.length) usage(`${argv[i]} needs a value`);
    opts[name] = argv[++i];
  }
  if (!opts.bundle) usage('--bundle FILE is required');
  if (opts.artifacts.length === 0) usage('at least one ARTIFACT is required');
  if (!opts.key && !opts.trustedRoot) usage('--key (key-signed) or --trusted-root (keyless, or a key-signed bundle entered in Rekor) is required');
  if (!opts.key && (!opts.identity || !opts.issuer)) {
    usage('a keyless bundle needs --certificate-identity-regexp and --certificate-oidc-issuer');
  }
  return opts;
}

// verifier returns the sigstore-js verifier and policy for the mode. For a key-signed bundle
// the trusted key is the only one tried, whatever the bundle's unauthenticated key hint says;
// without a trusted root it has no transparency-log entry or timestamp to require, with one
// its Rekor entry is required (and is its timestamp).
function verifier(opts) {
  const root = TrustedRoot.fromJSON(opts.trustedRoot ? JSON.parse(fs.readFileSync(opts.trustedRoot, 'utf8')) : EMPTY_ROOT);
  if (opts.key) {
    const publicKey = crypto.createPublicKey(fs.readFileSync(opts.key));
    const trust = toTrustMaterial(root, () => ({ publicKey, validFor: () => true }));
    const n = opts.trustedRoot ? 1 : 0;
    return { v: new Verifier(trust, { tlogThreshold: n, ctlogThreshold: 0, timestampThreshold: n }), policy: undefined };
  }
  const policy = { subjectAlternativeName: opts.identity, extensions: { issuer: opts.issuer } };
  return { v: new Verifier(toTrustMaterial(root)), policy };
}

function checkStatement(bundle, opts) {
  const env = bundle.content.$case === 'dsseEnvelope' ? bundle.content.dsseEnvelope : undefined;
  if (!env || env.payloadType !== PAYLOAD_TYPE) throw new Error(`the bundle holds no DSSE envelope of payload type ${PAYLOAD_TYPE}`);
  const stmt = JSON.parse(Buffer.from(env.payload).toString('utf8'));
  if (stmt._type !== STATEMENT_TYPE) throw new Error(`statement _type is ${stmt._type}, want ${STATEMENT_TYPE}`);
  if (stmt.predicateType !== opts.type) throw new Error(`predicateType is ${stmt.predicateType}, want ${opts.type}`);
  const digests = new Set((stmt.subject || []).map((s) => s.digest && s.digest.sha256));
  for (const a of opts.artifacts) {
    const sum = crypto.createHash('sha256').update(fs.readFileSync(a)).digest('hex');
    if (!digests.has(sum)) throw new Error(`${a}: sha256 ${sum} is not a subject of the statement`);
  }
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  try {
    const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(opts.bundle, 'utf8')));
    const { v, policy } = verifier(opts);
    v.verify(toSignedEntity(bundle), policy);
    checkStatement(bundle, opts);
  } catch (e) {
    process.stderr.write(`sigstore-js-verify: rejected: ${e.code ? e.code + ': ' : ''}${e.message}\n`);
    process.exit(1);
  }
  process.stdout.write(`Verified OK: ${opts.artifacts.join(' ')}\n`);
}

main();
