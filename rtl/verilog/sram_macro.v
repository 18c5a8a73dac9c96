// Behavioural model of a single-port-read, single-port-write SRAM macro with byte
// enables, as an SRAM compiler would deliver it. Used by rtl/sram.py for large
// memories in Verilator builds; identical behaviour to amaranth.lib.memory:
// synchronous read (data the cycle after `ren`, holding otherwise), non-transparent,
// byte-granular writes. No initialiser: Verilator starts it at zero and the testbench
// loads it through the simulator (hence public: the only internal signal the bench
// touches).
module sram_macro #(parameter WIDTH_BYTES = 16, parameter DEPTH = 1024,
                    parameter ADDR_BITS = 10) (
    input  wire                       clk,
    input  wire                       ren,
    input  wire [ADDR_BITS-1:0]       raddr,
    output reg  [8*WIDTH_BYTES-1:0]   rdata,
    input  wire [WIDTH_BYTES-1:0]     wen,
    input  wire [ADDR_BITS-1:0]       waddr,
    input  wire [8*WIDTH_BYTES-1:0]   wdata
);
    reg [8*WIDTH_BYTES-1:0] mem [0:DEPTH-1] /*verilator public_flat_rw*/;
    integer i;
    always @(posedge clk) begin
        if (ren)
            rdata <= mem[raddr];
        for (i = 0; i < WIDTH_BYTES; i = i + 1)
            if (wen[i])
                mem[waddr][8*i +: 8] <= wdata[8*i +: 8];
    end
endmodule
