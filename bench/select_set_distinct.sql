\if :set_done = 0
\set timeout 30000 + :client_id
SET statement_timeout = :timeout;
\set set_done 1
\endif
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
