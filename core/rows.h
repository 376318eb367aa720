/* rows: the account rows as the planner reads them — plain C values, no
 * libpq. A row set is a table of text cells (NULL: SQL NULL) with column
 * names, and which columns are booleans ("t"/"f"). Two ways to make one:
 * from a query result (rows_from_pgresult: the cells are the result's own
 * strings, borrowed, so a full pass over 100,000 accounts costs no second
 * copy of the table) or from C arrays (rows_from_cells: the unit tests); and
 * a view of some rows of another set (rows_subset: `plan`'s chunks).
 * The planner (reconcile.h) and the safety filter (safety.h) take rows, so
 * they are tested without a database. */
#ifndef ROWS_H
#define ROWS_H

#include <libpq-fe.h>
#include <stddef.h>

typedef struct acct_rows {
    int nrows, ncols;
    const char *const *names; /* ncols column names */
    const unsigned char *is_bool; /* per column: 1 for a boolean column */
    /* cell(r, row, col): the text of one cell, NULL for SQL NULL */
    const char *(*cell)(const struct acct_rows *r, int row, int col);
    const void *data; /* the backend's */
    /* private */
    const struct acct_rows *src; /* rows_subset: the set viewed */
    const char **names_own;
    unsigned char *bool_own;
} acct_rows;

/* A view of res (borrowed: valid while res is). Free with rows_free. */
void rows_from_pgresult(acct_rows *r, const PGresult *res);
/* A view of cells (nrows * ncols, row-major; NULL = SQL NULL), borrowed.
 * names: ncols names; bools: a column is boolean when its name is in this
 * NULL-terminated list (NULL: none). */
void rows_from_cells(acct_rows *r, int nrows, int ncols, const char *const *names, const char *const *cells,
                     const char *const *bools);
/* A view of some rows of src (rows[i] is the row of src shown as row i),
 * borrowed: valid while src and rows are. */
void rows_subset(acct_rows *r, const acct_rows *src, const int *rows, int nrows);
void rows_free(acct_rows *r);

/* The index of the column called name, or -1. */
int rows_column(const acct_rows *r, const char *name);
/* The cell's text (NULL: SQL NULL, or col < 0). */
const char *rows_value(const acct_rows *r, int row, int col);

#endif
