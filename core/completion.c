/* completion: bash and zsh completion scripts. See completion.h.
 *
 * Both complete: the command (first word); `migrate up|status|check`;
 * `rollout status|resume|abort`;
 * `completion bash|zsh`; the value of -o/--output, --log-level,
 * --log-format; files for --kubeconfig and the directory flags; kubeconfig
 * contexts for --context (read with kubectl when it is installed); every
 * flag of --help otherwise. */
#include "completion.h"

#include <string.h>

#include "config.h"
#include "util.h"

/* Flags whose value is a file or directory. */
static int file_flag(const char *flag)
{
    return !strcmp(flag, "kubeconfig") || !strcmp(flag, "rules-dir") || !strcmp(flag, "migrations-dir") ||
           !strcmp(flag, "rules-state-dir");
}

/* A zsh _arguments / _describe description: no brackets or colons. */
static void put_zsh_desc(buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '[' || *s == ']' || *s == ':' || *s == '\\')
            buf_putc(b, '\\');
        if (*s == '\'')
            buf_puts(b, "'\\''");
        else
            buf_putc(b, *s);
    }
}

static void write_bash(buf *b, const completion_command *cmds, size_t n)
{
    const char *flag, *help;
    int takes_value;
    buf_puts(b, "# bash completion for sync-airbnb-operator.\n"
                "# Load it with: source <(sync-airbnb-operator completion bash)\n"
                "_sync_airbnb_operator() {\n"
                "    local cur=\"${COMP_WORDS[COMP_CWORD]}\" prev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n"
                "    local commands=\"");
    for (size_t i = 0; i < n; i++)
        buf_printf(b, "%s%s", i ? " " : "", cmds[i].name);
    buf_puts(b, "\"\n    local flags=\"-o --output -h --help");
    for (size_t i = 0; config_flag_at(i, &flag, &help, &takes_value); i++)
        buf_printf(b, " --%s", flag);
    buf_puts(b, "\"\n"
                "    COMPREPLY=()\n"
                "    if [ \"$COMP_CWORD\" -eq 1 ]; then\n"
                "        COMPREPLY=($(compgen -W \"$commands\" -- \"$cur\"))\n"
                "        return 0\n"
                "    fi\n"
                "    case \"$prev\" in\n"
                "    -o|--output) COMPREPLY=($(compgen -W \"json yaml table\" -- \"$cur\")); return 0 ;;\n"
                "    --log-level) COMPREPLY=($(compgen -W \"debug info warn error\" -- \"$cur\")); return 0 ;;\n"
                "    --log-format) COMPREPLY=($(compgen -W \"json text\" -- \"$cur\")); return 0 ;;\n"
                "    --context)\n"
                "        COMPREPLY=($(compgen -W \"$(kubectl config get-contexts -o name 2>/dev/null)\" -- \"$cur\"))\n"
                "        return 0 ;;\n"
                "    --kubeconfig|--rules-dir|--migrations-dir|--rules-state-dir)\n"
                "        COMPREPLY=($(compgen -f -- \"$cur\")); return 0 ;;\n");
    /* Other flags that take a value: nothing to offer, do not offer flags. */
    buf_puts(b, "    ");
    int first = 1;
    for (size_t i = 0; config_flag_at(i, &flag, &help, &takes_value); i++) {
        if (!takes_value || file_flag(flag) || !strcmp(flag, "log-level") || !strcmp(flag, "log-format") ||
            !strcmp(flag, "context"))
            continue;
        buf_printf(b, "%s--%s", first ? "" : "|", flag);
        first = 0;
    }
    buf_puts(b, ") return 0 ;;\n"
                "    esac\n"
                "    if [ \"$COMP_CWORD\" -eq 2 ]; then\n"
                "        case \"${COMP_WORDS[1]}\" in\n"
                "        migrate) COMPREPLY=($(compgen -W \"up status check\" -- \"$cur\")); return 0 ;;\n"
                "        rollout) COMPREPLY=($(compgen -W \"status resume abort\" -- \"$cur\")); return 0 ;;\n"
                "        completion) COMPREPLY=($(compgen -W \"bash zsh\" -- \"$cur\")); return 0 ;;\n"
                "        check-rules) [[ \"$cur\" != -* ]] && { COMPREPLY=($(compgen -d -- \"$cur\")); return 0; } ;;\n"
                "        esac\n"
                "    fi\n"
                "    COMPREPLY=($(compgen -W \"$flags\" -- \"$cur\"))\n"
                "}\n"
                "complete -F _sync_airbnb_operator sync-airbnb-operator\n");
}

static void write_zsh(buf *b, const completion_command *cmds, size_t n)
{
    const char *flag, *help;
    int takes_value;
    buf_puts(b, "#compdef sync-airbnb-operator\n"
                "# zsh completion for sync-airbnb-operator.\n"
                "# Load it with: source <(sync-airbnb-operator completion zsh)\n"
                "# or save it as _sync-airbnb-operator in a directory of $fpath.\n"
                "_sync_airbnb_operator() {\n"
                "    local -a commands flags\n"
                "    commands=(\n");
    for (size_t i = 0; i < n; i++) {
        buf_puts(b, "        '");
        put_zsh_desc(b, cmds[i].name);
        buf_putc(b, ':');
        put_zsh_desc(b, cmds[i].summary);
        buf_puts(b, "'\n");
    }
    buf_puts(b, "    )\n"
                "    flags=(\n"
                "        '(-o --output)'{-o,--output}'[output format]:format:(json yaml table)'\n"
                "        '(- *)'{-h,--help}'[show the help]'\n");
    for (size_t i = 0; config_flag_at(i, &flag, &help, &takes_value); i++) {
        buf_printf(b, "        '--%s%s[", flag, takes_value ? "=" : "");
        put_zsh_desc(b, help);
        buf_putc(b, ']');
        if (takes_value) {
            if (!strcmp(flag, "kubeconfig"))
                buf_puts(b, ":kubeconfig:_files");
            else if (file_flag(flag))
                buf_puts(b, ":directory:_files -/");
            else if (!strcmp(flag, "log-level"))
                buf_puts(b, ":level:(debug info warn error)");
            else if (!strcmp(flag, "log-format"))
                buf_puts(b, ":format:(json text)");
            else if (!strcmp(flag, "context"))
                buf_puts(b, ":context:{compadd -- ${(f)\"$(kubectl config get-contexts -o name 2>/dev/null)\"}}");
            else
                buf_puts(b, ":value: ");
        }
        buf_puts(b, "'\n");
    }
    buf_puts(b, "    )\n"
                "    if (( CURRENT == 2 )); then\n"
                "        _describe -t commands 'sync-airbnb-operator command' commands\n"
                "        return\n"
                "    fi\n"
                "    case $words[2] in\n"
                "    migrate) flags+=('1:migrate command:(up status check)') ;;\n"
                "    rollout) flags+=('1:rollout command:(status resume abort)') ;;\n"
                "    completion) flags+=('1:shell:(bash zsh)') ;;\n"
                "    check-rules) flags+=('1:rules directory:_files -/') ;;\n"
                "    esac\n"
                "    words=(\"${(@)words[2,-1]}\")\n"
                "    (( CURRENT-- ))\n"
                "    _arguments -s -S $flags\n"
                "}\n"
                "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then\n"
                "    _sync_airbnb_operator \"$@\"\n"
                "else\n"
                "    compdef _sync_airbnb_operator sync-airbnb-operator\n"
                "fi\n");
}

int completion_write(FILE *f, const char *shell, const completion_command *cmds, size_t ncmds)
{
    buf b = {0};
    if (shell && !strcmp(shell, "bash"))
        write_bash(&b, cmds, ncmds);
    else if (shell && !strcmp(shell, "zsh"))
        write_zsh(&b, cmds, ncmds);
    else
        return -1;
    fwrite(b.data, 1, b.len, f);
    buf_free(&b);
    return 0;
}
