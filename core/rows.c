/* rows: see rows.h. */
#include "rows.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

#define BOOLOID 16

static const char *pg_cell(const acct_rows *r, int row, int col)
{
    const PGresult *res = r->data;
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

void rows_from_pgresult(acct_rows *r, const PGresult *res)
{
    memset(r, 0, sizeof *r);
    r->nrows = PQntuples(res);
    r->ncols = PQnfields(res);
    r->names_own = xcalloc((size_t)r->ncols + 1, sizeof *r->names_own);
    r->bool_own = xcalloc((size_t)r->ncols + 1, 1);
    for (int c = 0; c < r->ncols; c++) {
        r->names_own[c] = PQfname(res, c);
        r->bool_own[c] = PQftype(res, c) == BOOLOID;
    }
    r->names = r->names_own;
    r->is_bool = r->bool_own;
    r->cell = pg_cell;
    r->data = res;
}

static const char *array_cell(const acct_rows *r, int row, int col)
{
    const char *const *cells = r->data;
    return cells[(size_t)row * (size_t)r->ncols + (size_t)col];
}

void rows_from_cells(acct_rows *r, int nrows, int ncols, const char *const *names, const char *const *cells,
                     const char *const *bools)
{
    memset(r, 0, sizeof *r);
    r->nrows = nrows;
    r->ncols = ncols;
    r->names = names;
    r->bool_own = xcalloc((size_t)ncols + 1, 1);
    for (int c = 0; c < ncols; c++)
        for (size_t b = 0; bools && bools[b]; b++)
            if (strcmp(bools[b], names[c]) == 0)
                r->bool_own[c] = 1;
    r->is_bool = r->bool_own;
    r->cell = array_cell;
    r->data = cells;
}

static const char *subset_cell(const acct_rows *r, int row, int col)
{
    const int *rows = r->data;
    return r->src->cell(r->src, rows[row], col);
}

void rows_subset(acct_rows *r, const acct_rows *src, const int *rows, int nrows)
{
    memset(r, 0, sizeof *r);
    r->nrows = nrows;
    r->ncols = src->ncols;
    r->names = src->names;
    r->is_bool = src->is_bool;
    r->cell = subset_cell;
    r->data = rows;
    r->src = src;
}

void rows_free(acct_rows *r)
{
    free(r->names_own);
    free(r->bool_own);
    memset(r, 0, sizeof *r);
}

int rows_column(const acct_rows *r, const char *name)
{
    for (int c = 0; c < r->ncols; c++)
        if (strcmp(r->names[c], name) == 0)
            return c;
    return -1;
}

const char *rows_value(const acct_rows *r, int row, int col)
{
    return col < 0 ? NULL : r->cell(r, row, col);
}
