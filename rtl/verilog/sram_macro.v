// Behavioural model of a single-port-read, single-port-write SRAM macro with byte
// enables, as an SRAM compiler would deliver it. Used by rtl/sram.py for large
// memories in Verilator builds; identical behaviour to amaranth.lib.memory:
// synchronous read (data the cycle after `ren`, holding otherwise), non-transparent,
// byte-granular writes. No initialiser: Verilator starts it at zero.
//
// BACKDOOR = 2 (an L2 bank, BANK its index) writes the contents at the end of the
// simulation to <prefix>.<BANK>.hex, where +l2_dump=<prefix>: the bench compares the
// whole L2 with the ISA simulator's; with +l2_image=<prefix> it starts from
// <prefix>.<BANK>.hex (a run continued from an earlier one's L2).
//
// BACKDOOR = 1 (the simulation DRAM's storage only) gives the testbench file access,
// as a simulator's memory backdoor does: at time zero the contents are read from the
// file named by the plusarg +dram_image=<file> ($readmemh, one line per row), and at
// the end of simulation they are written to +dram_dump=<file> ($writememh). Loading a
// megabyte row by row through VPI took the cocotb bench about a second each way.
module sram_macro #(parameter WIDTH_BYTES = 16, parameter DEPTH = 1024,
                    parameter ADDR_BITS = 10, parameter BACKDOOR = 0,
                    parameter BANK = 0) (
    input  wire                       clk,
    input  wire                       ren,
    input  wire [ADDR_BITS-1:0]       raddr,
    output reg  [8*WIDTH_BYTES-1:0]   rdata,
    input  wire [WIDTH_BYTES-1:0]     wen,
    input  wire [ADDR_BITS-1:0]       waddr,
    input  wire [8*WIDTH_BYTES-1:0]   wdata
);
    reg [8*WIDTH_BYTES-1:0] mem [0:DEPTH-1];
    integer i;
    always @(posedge clk) begin
        if (ren)
            rdata <= mem[raddr];
        for (i = 0; i < WIDTH_BYTES; i = i + 1)
            if (wen[i])
                mem[waddr][8*i +: 8] <= wdata[8*i +: 8];
    end

    generate if (BACKDOOR == 2) begin : l2_backdoor
        string prefix, image;
        initial
            if ($value$plusargs("l2_image=%s", image))
                $readmemh($sformatf("%s.%0d.hex", image, BANK), mem);
        final
            if ($value$plusargs("l2_dump=%s", prefix))
                $writememh($sformatf("%s.%0d.hex", prefix, BANK), mem);
    end endgenerate

    generate if (BACKDOOR == 1) begin : backdoor
        reg [8*4096-1:0] image_file, dump_file;
        initial
            if ($value$plusargs("dram_image=%s", image_file))
                $readmemh(image_file, mem);
        final
            if ($value$plusargs("dram_dump=%s", dump_file))
                $writememh(dump_file, mem);
    end endgenerate
endmodule
