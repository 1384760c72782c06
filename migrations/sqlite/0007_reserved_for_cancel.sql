-- PLACEHOLDER on the retention branch only: 0007 is the cancel migration (another branch). The loader
-- refuses gaps, so this empty step holds the number until that branch merges; delete this file then.
SELECT 1;
