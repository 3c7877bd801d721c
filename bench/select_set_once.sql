\if :set_done = 0
SET statement_timeout = '30s';
\set set_done 1
\endif
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
