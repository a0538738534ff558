-- Verified buyers (issue 25): with HC_BUYER_AUTH=jwt a buyer is the pair (issuer, subject) its token names, and
-- gets a stable number of its own here, the user_id its orders, holds, places in line and limits are kept under.
-- (A database that sold with HC_BUYER_AUTH=none holds the numbers clients wrote in the same user_id columns.)
CREATE TABLE IF NOT EXISTS buyers (
    id         bigserial   PRIMARY KEY,
    issuer     text        NOT NULL,
    subject    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer, subject)
);
