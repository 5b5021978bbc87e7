# Batch driver for Mail::SRS::Guarded (Mail::SRS 0.31): one request per stdin line, raw bytes.
#
# Usage: perl mailsrs.pl DOMAIN SECRET_HEX [SECRET_HEX...]  (the first secret signs)
# Request lines, one per line, raw bytes, "\n"-terminated:
#   F <sender>    forward(sender, DOMAIN)
#   R <address>   reverse(address)
#   T             timestamp_create() for the current (faketime'd) clock
# Reply lines, in order: "OK <result>" or "ERR <message, newlines replaced by spaces>".
# The clock is whatever time() says: run this under faketime to pin it.
# No "use v5.x" and no "use utf8": strings stay byte strings, so lc() folds ASCII only,
# exactly as postsrsd and srsd do.
use strict;
use warnings;
use Mail::SRS::Guarded;

my ($domain, @secrets_hex) = @ARGV;
die "usage: mailsrs.pl DOMAIN SECRET_HEX...\n" unless defined $domain && @secrets_hex;
my @secrets = map { pack('H*', $_) } @secrets_hex;

# Secret => [...] keeps the bytes exactly (the srs CLI's --secretfile keeps the newline).
my $srs = Mail::SRS::Guarded->new(
    Secret     => \@secrets,
    MaxAge     => 21,
    HashLength => 4,
    HashMin    => 4,
    Separator  => '=',
);

binmode STDIN,  ':raw';
binmode STDOUT, ':raw';
# Warnings (case-insensitive hash matches, undef fields of malformed input) go to stderr.

while (my $line = <STDIN>) {
    chomp $line;
    my $op = substr($line, 0, 1);
    my $arg = length($line) > 2 ? substr($line, 2) : '';
    my $result = eval {
        if    ($op eq 'F') { $srs->forward($arg, $domain) }
        elsif ($op eq 'R') { $srs->reverse($arg) }
        elsif ($op eq 'T') { $srs->timestamp_create() }
        else               { die "unknown request '$op'\n" }
    };
    if (defined $result) {
        print "OK $result\n";
    }
    else {
        my $err = $@ || 'undefined result';
        $err =~ s/[\r\n]+/ /g;
        $err =~ s/\s+\z//;
        print "ERR $err\n";
    }
}
