-- Schema version 1 of the ca-daemon PostgreSQL store (issue #15).
-- Applied by PgStore::connect under pg_advisory_lock, in one transaction, and recorded in
-- schema_version. Text keys use COLLATE "C" so that their order is byte order, as in sled
-- (list_certificates pages by serial).

-- Issuing CAs (DESIGN §3). One row per issuer; certificates reference it.
CREATE TABLE issuers (
    id          text COLLATE "C" PRIMARY KEY,
    state       text NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
    cert_der    bytea NOT NULL,
    not_before  timestamptz NOT NULL,
    not_after   timestamptz NOT NULL,
    created_at  timestamptz NOT NULL
);

-- Enrollment tickets. The password itself is never stored, only its keyed hash (32 bytes).
-- A renewal ticket names the serial it renews (renews_serial). facility/person/device ids are
-- copied out of the enrollee for the "cancel the live tickets of a revoked target" query.
CREATE TABLE tickets (
    number           text COLLATE "C" PRIMARY KEY,
    password_mac     bytea NOT NULL CHECK (octet_length(password_mac) = 32),
    state            text NOT NULL
                     CHECK (state IN ('active', 'redeemed', 'expired', 'locked', 'cancelled')),
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    failed_attempts  bigint NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    enrollee         jsonb NOT NULL,
    facility_id      text COLLATE "C" NOT NULL,
    person_id        text COLLATE "C" NOT NULL,
    device_id        text COLLATE "C" NOT NULL,
    cert_profile     text NOT NULL,
    approved_by      text NOT NULL,
    created_by       text NOT NULL,
    redeemed_serial  text COLLATE "C",
    renews_serial    text COLLATE "C",
    CHECK (state <> 'redeemed' OR redeemed_serial IS NOT NULL)
);
CREATE INDEX tickets_facility ON tickets (facility_id) WHERE state = 'active';
CREATE INDEX tickets_person ON tickets (person_id) WHERE state = 'active';
CREATE INDEX tickets_device ON tickets (device_id) WHERE state = 'active';

-- Issued certificates, serial (lowercase hex) unique. The revocation columns are set once
-- (all together) and never change afterwards.
CREATE TABLE certificates (
    serial            text COLLATE "C" PRIMARY KEY,
    issuer_id         text COLLATE "C" NOT NULL REFERENCES issuers (id),
    der               bytea NOT NULL,
    facility_id       text COLLATE "C" NOT NULL,
    person_id         text COLLATE "C" NOT NULL,
    device_id         text COLLATE "C" NOT NULL,
    os                text NOT NULL,
    keystore_profile  text NOT NULL,
    ticket_number     text COLLATE "C" NOT NULL,
    not_before        timestamptz NOT NULL,
    not_after         timestamptz NOT NULL,
    issued_at         timestamptz NOT NULL,
    revoked_at        timestamptz,
    reason            smallint CHECK (reason BETWEEN 0 AND 10),
    invalidity_date   timestamptz,
    CHECK ((revoked_at IS NULL) = (reason IS NULL)),
    CHECK (revoked_at IS NOT NULL OR invalidity_date IS NULL)
);
CREATE INDEX certificates_facility ON certificates (facility_id, serial);
CREATE INDEX certificates_person ON certificates (person_id, serial);
CREATE INDEX certificates_device ON certificates (device_id, serial);
CREATE INDEX certificates_issuer_expiry ON certificates (issuer_id, not_after);

-- The revoked-by-issuer index: what a CRL needs, read without the certificates. It also holds
-- serials the store does not know (reinstated from a published CRL after a restore), which is
-- why it is a table of its own and has no foreign key to certificates.
CREATE TABLE revocations (
    issuer_id        text COLLATE "C" NOT NULL,
    serial           text COLLATE "C" NOT NULL,
    not_after        timestamptz NOT NULL,
    revoked_at       timestamptz NOT NULL,
    reason           smallint NOT NULL CHECK (reason BETWEEN 0 AND 10),
    invalidity_date  timestamptz,
    PRIMARY KEY (issuer_id, serial)
);

-- Renewals: the renewed certificate (serial), the one that renewed it, and when it is to be
-- revoked as superseded (due, whole seconds; NULL once applied or dropped from the schedule).
CREATE TABLE supersessions (
    serial      text COLLATE "C" PRIMARY KEY,
    renewed_by  text COLLATE "C" NOT NULL,
    due         timestamptz
);
CREATE INDEX supersessions_due ON supersessions (due, serial) WHERE due IS NOT NULL;

-- Published CRLs, a short history per issuer ('root' for the root's CRL over its issuers).
-- Numbers per issuer are unique and, since save_crl locks the issuer's crl_numbers row,
-- strictly increase in commit order.
CREATE TABLE crls (
    issuer_id    text COLLATE "C" NOT NULL,
    number       bigint NOT NULL CHECK (number > 0),
    this_update  timestamptz NOT NULL,
    next_update  timestamptz NOT NULL,
    der          bytea NOT NULL,
    saved_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer_id, number)
);

-- The highest CRL number reserved or saved per issuer: numbers never go back, across crashes
-- and nodes. Its row is also the lock save_crl takes.
CREATE TABLE crl_numbers (
    issuer_id  text COLLATE "C" PRIMARY KEY,
    reserved   bigint NOT NULL CHECK (reserved >= 0)
);

-- The hash-chained audit log (crate::audit): one chain for every node. time is kept exactly
-- as hashed (Unix nanoseconds and UTC offset), so verify_audit recomputes the same hashes.
CREATE TABLE audit (
    seq          bigint PRIMARY KEY CHECK (seq > 0),
    time_ns      bigint NOT NULL,
    time_offset  integer NOT NULL,
    actor        text NOT NULL,
    action       text NOT NULL,
    target       text NOT NULL,
    detail       text NOT NULL,
    prev_hash    bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash         bytea NOT NULL CHECK (octet_length(hash) = 32)
);

-- The head of the audit chain (one row): every append takes it FOR UPDATE inside the
-- transaction of the change, so appends are one total order across nodes, and verify_audit
-- checks that the log ends at it (a deleted last row is found).
CREATE TABLE audit_head (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq   bigint NOT NULL CHECK (seq >= 0),
    hash  bytea NOT NULL CHECK (octet_length(hash) = 32)
);
INSERT INTO audit_head (id, seq, hash) VALUES (true, 0, decode(repeat('00', 32), 'hex'));

-- Sealed or public files of the keys directory (issuer rotation across nodes), by relative
-- path. Written once; never a plaintext key.
CREATE TABLE key_blobs (
    name        text COLLATE "C" PRIMARY KEY
                CHECK (name ~ '^[A-Za-z0-9._/-]+$' AND name !~ '(^|/)\.\.?(/|$)'),
    blob        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
